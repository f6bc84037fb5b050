//! One trace per order, across HTTP and Kafka: the W3C trace context (`traceparent`,
//! `tracestate`) rides on every record a service writes, and whoever handles the record
//! continues that trace.
//!
//! Spans are made for sampled traces only. Whether a trace is sampled is decided once, where
//! it starts, by the sampler of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (see
//! [`sampler_from_env`]; default: parent-based, 1 % of new traces), and every later step
//! follows the sampled flag of the `traceparent` it received. Work of an unsampled trace
//! makes no span at all (no attributes gathered, nothing exported) and passes the trace
//! context on as it came, so a trace stays whole however the services sample and a caller
//! can ask for a trace by sending a sampled `traceparent`.
//!
//! - [`http`]: the trace of an HTTP request, continuing the caller's `traceparent` if it
//!   sent one (orders' `POST /order` starts an order's trace).
//! - [`handling`]: the trace of handling one Kafka message, continuing the one that wrote it.
//! - [`Traced::headers`]: its trace context as Kafka headers, for the records written while
//!   handling.

use std::sync::OnceLock;

use axum::http::{HeaderMap, Request};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use tracing::{Span, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::settings::SettingsError;

/// The share of new traces sampled when `OTEL_TRACES_SAMPLER` is not set: at 1,000 orders/s,
/// 10 whole traces a second reach the collector, enough to see every path an order takes. A
/// sampled order costs every service a span to make and export; an unsampled one only the
/// two headers of its trace context.
pub const DEFAULT_RATIO: f64 = 0.01;

/// The sampler every trace decision in this process takes, set once by
/// [`crate::telemetry::init`]; `None`: traces are off (`OTEL_SDK_DISABLED=true`), no span is
/// made and no trace context written. Unset (tests, tools): every trace is sampled.
static SAMPLER: OnceLock<Option<Sampler>> = OnceLock::new();

/// Makes `sampler` the one every trace decision in this process takes; `None` turns traces
/// off (no span, no trace context written). Called once by [`crate::telemetry::init`]; a
/// second call changes nothing. Never called (tests, tools): every trace is sampled.
pub fn set_sampler(sampler: Option<Sampler>) {
    let _ = SAMPLER.set(sampler);
}

fn sampler() -> Option<&'static Sampler> {
    SAMPLER.get_or_init(|| Some(Sampler::AlwaysOn)).as_ref()
}

/// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name, as OpenTelemetry
/// defines them (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
/// `parentbased_always_off`, `parentbased_traceidratio`; the ratio from 0 to 1, 1 when not
/// given). Neither set: `parentbased_traceidratio` at [`DEFAULT_RATIO`]; only the ratio set:
/// `parentbased_traceidratio` at that ratio. A value the specification does not define is
/// an error naming the variable.
pub fn sampler_from_env() -> Result<Sampler, SettingsError> {
    let var = |name| std::env::var(name).ok().filter(|value| !value.is_empty());
    sampler_from(
        var("OTEL_TRACES_SAMPLER").as_deref(),
        var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )
}

fn sampler_from(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, SettingsError> {
    let ratio = |default: f64| match arg {
        None => Ok(default),
        Some(arg) => match arg.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
            _ => Err(SettingsError::new(
                "OTEL_TRACES_SAMPLER_ARG",
                format!("expected a ratio from 0 to 1, found {arg:?}"),
            )),
        },
    };
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    Ok(match name {
        None => parent_based(Sampler::TraceIdRatioBased(ratio(DEFAULT_RATIO)?)),
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatioBased(ratio(1.0)?),
        Some("parentbased_always_on") => parent_based(Sampler::AlwaysOn),
        Some("parentbased_always_off") => parent_based(Sampler::AlwaysOff),
        Some("parentbased_traceidratio") => parent_based(Sampler::TraceIdRatioBased(ratio(1.0)?)),
        Some(other) => {
            return Err(SettingsError::new(
                "OTEL_TRACES_SAMPLER",
                format!(
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio, found {other:?}"
                ),
            ));
        }
    })
}

/// The trace of one piece of work (an HTTP request, the handling of a message): a span
/// when the trace is sampled, else only the trace context to pass on.
#[derive(Debug, Clone)]
pub struct Traced {
    /// `Span::none()` when the trace is not sampled.
    span: Span,
    passed_on: PassedOn,
}

/// The trace context a piece of work passes on.
#[derive(Debug, Clone)]
enum PassedOn {
    /// Its span's.
    Span,
    /// No span was made: the caller's, or a new trace's.
    Unsampled(SpanContext),
    /// None: traces are off.
    Nothing,
}

impl Traced {
    /// Traces are off: no span, no trace context.
    const OFF: Traced = Traced {
        span: Span::none(),
        passed_on: PassedOn::Nothing,
    };

    /// The span to do the work in (a disabled one when the trace is not sampled).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Whether spans are made for this trace.
    pub fn is_sampled(&self) -> bool {
        matches!(self.passed_on, PassedOn::Span)
    }

    /// The trace context as Kafka headers (`traceparent`, and `tracestate` when there is
    /// one), for a record written on this work's behalf.
    pub fn headers(&self) -> OwnedHeaders {
        self.add_headers(OwnedHeaders::new_with_capacity(2))
    }

    /// `headers` with the trace context added (see [`Traced::headers`]).
    pub fn add_headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let mut fields = KafkaFields(Some(headers));
        TraceContextPropagator::new().inject_context(&self.context(), &mut fields);
        fields.0.unwrap_or_default()
    }

    /// The trace id (32 hex digits), as Jaeger finds a sampled trace: `/api/traces/<id>`.
    pub fn trace_id(&self) -> String {
        self.context().span().span_context().trace_id().to_string()
    }

    fn context(&self) -> Context {
        match &self.passed_on {
            PassedOn::Span => self.span.context(),
            PassedOn::Unsampled(context) => {
                Context::new().with_remote_span_context(context.clone())
            }
            PassedOn::Nothing => Context::new(),
        }
    }
}

/// The trace of an HTTP request, its span named by method and route (`POST /order`),
/// continuing the trace of the caller's `traceparent` header when it sent a valid one.
pub fn http<B>(request: &Request<B>) -> Traced {
    let Some(sampler) = sampler() else {
        return Traced::OFF;
    };
    let parent = TraceContextPropagator::new().extract(&HttpHeaders(request.headers()));
    start(sampler, parent, SpanKind::Server, || {
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or_else(|| request.uri().path(), |path| path.as_str());
        info_span!(
            "http request",
            otel.name = format!("{} {route}", request.method()),
            otel.kind = "server",
            http.request.method = %request.method(),
            http.route = route,
        )
    })
}

/// The trace of handling one message, continuing the trace of the record's `traceparent`
/// header (a span of its own is the child of the span that wrote it), or a new trace when
/// it has none.
pub fn handling(message: &impl Message) -> Traced {
    let Some(sampler) = sampler() else {
        return Traced::OFF;
    };
    let parent = match message.headers() {
        Some(headers) => TraceContextPropagator::new().extract(&KafkaHeaders(headers)),
        None => Context::new(),
    };
    start(sampler, parent, SpanKind::Consumer, || {
        let key = message
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .unwrap_or_default();
        // What finds the message again; the service is the trace's resource already.
        info_span!(
            "handle message",
            otel.name = format!("{} process", message.topic()),
            otel.kind = "consumer",
            messaging.destination.name = message.topic(),
            messaging.destination.partition.id = message.partition(),
            messaging.kafka.offset = message.offset(),
            messaging.kafka.message.key = key,
        )
    })
}

/// Asks `sampler` about a piece of work whose caller's trace context is `parent` (empty
/// when there is none), and makes its span with `make` only for a sampled trace.
fn start(
    sampler: &Sampler,
    parent: Context,
    kind: SpanKind,
    make: impl FnOnce() -> Span,
) -> Traced {
    let remote = parent.span().span_context().clone();
    let trace_id = if remote.is_valid() {
        remote.trace_id()
    } else {
        RandomIdGenerator::default().new_trace_id()
    };
    let decision = sampler
        .should_sample(Some(&parent), trace_id, "", &kind, &[], &[])
        .decision;
    if decision == SamplingDecision::RecordAndSample {
        let span = make();
        if remote.is_valid() {
            // Fails only when no OpenTelemetry layer is installed (unit tests, spans off).
            let _ = span.set_parent(parent);
        }
        return Traced {
            span,
            passed_on: PassedOn::Span,
        };
    }
    // Passed on as it came; a trace that starts here gets ids of its own.
    let context = if remote.is_valid() {
        remote
    } else {
        SpanContext::new(
            trace_id,
            RandomIdGenerator::default().new_span_id(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        )
    };
    Traced {
        span: Span::none(),
        passed_on: PassedOn::Unsampled(context),
    }
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

/// Kafka headers being written to (`OwnedHeaders::insert` takes them by value).
struct KafkaFields(Option<OwnedHeaders>);

impl Injector for KafkaFields {
    fn set(&mut self, key: &str, value: String) {
        self.0 = self.0.take().map(|headers| {
            headers.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        });
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
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn message(traceparent: Option<&str>) -> OwnedMessage {
        let headers = traceparent.map(|value| {
            OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(value),
            })
        });
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

    /// `start` for a message, with the given sampler.
    fn handled_with(sampler: &Sampler, message: &OwnedMessage) -> Traced {
        let parent = match message.headers() {
            Some(headers) => TraceContextPropagator::new().extract(&KafkaHeaders(headers)),
            None => Context::new(),
        };
        start(sampler, parent, SpanKind::Consumer, || {
            info_span!("handle message")
        })
    }

    fn parent_based_ratio(ratio: f64) -> Sampler {
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
    }

    #[test]
    fn a_handled_message_continues_the_trace_of_its_writer() {
        with_tracer(|| {
            let sampled = format!("00-{TRACE}-00f067aa0ba902b7-01");
            let traced = handling(&message(Some(&sampled)));
            assert!(traced.is_sampled());
            let written = traceparent(&traced.headers());
            assert!(written.starts_with(&format!("00-{TRACE}-")), "{written}");
            assert!(written.ends_with("-01"), "{written}");
            assert!(
                !written.contains("00f067aa0ba902b7"),
                "a span of its own: {written}"
            );
        });
    }

    #[test]
    fn a_message_without_trace_context_starts_a_trace() {
        with_tracer(|| {
            let traced = handling(&message(None));
            let trace = traced.trace_id();
            assert_ne!(trace, opentelemetry::trace::TraceId::INVALID.to_string());
            let written = traceparent(&traced.headers());
            assert!(written.contains(&trace), "{written}");
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
            let traced = http(&request);
            assert_eq!(traced.trace_id(), TRACE);
            let written = traceparent(&traced.headers());
            assert!(written.starts_with(&format!("00-{TRACE}-")), "{written}");
        });
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        with_tracer(|| {
            let written = traceparent(&handling(&message(Some("not a trace"))).headers());
            assert!(written.starts_with("00-"), "{written}");
            assert!(!written.contains("not a trace"), "{written}");
        });
    }

    #[test]
    fn an_unsampled_trace_makes_no_span_and_passes_its_context_on_as_it_came() {
        with_tracer(|| {
            let unsampled = format!("00-{TRACE}-00f067aa0ba902b7-00");
            let traced = handled_with(&parent_based_ratio(1.0), &message(Some(&unsampled)));
            assert!(!traced.is_sampled());
            assert!(traced.span().is_none(), "no span for an unsampled trace");
            assert_eq!(traceparent(&traced.headers()), unsampled);
        });
    }

    #[test]
    fn a_sampled_caller_is_traced_whatever_the_ratio_of_new_traces() {
        with_tracer(|| {
            let sampled = format!("00-{TRACE}-00f067aa0ba902b7-01");
            let traced = handled_with(&parent_based_ratio(0.0), &message(Some(&sampled)));
            assert!(traced.is_sampled());
            assert!(!traced.span().is_none());
            assert_eq!(traced.trace_id(), TRACE);
        });
    }

    #[test]
    fn new_traces_are_sampled_by_the_ratio_and_carry_context_either_way() {
        with_tracer(|| {
            let unsampled = handled_with(&parent_based_ratio(0.0), &message(None));
            assert!(!unsampled.is_sampled());
            let written = traceparent(&unsampled.headers());
            assert!(written.ends_with("-00"), "{written}");
            assert!(written.contains(&unsampled.trace_id()), "{written}");
            let sampled = handled_with(&parent_based_ratio(1.0), &message(None));
            assert!(sampled.is_sampled());
            assert!(traceparent(&sampled.headers()).ends_with("-01"));
            // A tenth, give or take, of many new traces.
            let ratio = parent_based_ratio(0.1);
            let n = (0..2_000)
                .filter(|_| handled_with(&ratio, &message(None)).is_sampled())
                .count();
            assert!((100..=300).contains(&n), "{n} of 2,000 sampled at 0.1");
        });
    }

    #[test]
    fn with_traces_off_no_span_is_made_and_no_trace_context_written() {
        with_tracer(|| {
            let off = Traced::OFF;
            assert!(off.span().is_none());
            assert_eq!(off.headers().count(), 0, "no traceparent with traces off");
        });
    }

    #[test]
    fn the_sampler_comes_from_the_opentelemetry_variables() {
        let named = |name, arg| format!("{:?}", sampler_from(name, arg).unwrap());
        assert_eq!(
            named(None, None),
            format!("{:?}", parent_based_ratio(DEFAULT_RATIO))
        );
        assert_eq!(
            named(None, Some("0.5")),
            format!("{:?}", parent_based_ratio(0.5))
        );
        assert_eq!(named(Some("always_on"), None), "AlwaysOn");
        assert_eq!(
            named(Some("parentbased_traceidratio"), None),
            format!("{:?}", parent_based_ratio(1.0))
        );
        assert_eq!(
            named(Some("traceidratio"), Some("0.25")),
            "TraceIdRatioBased(0.25)"
        );
        let err = sampler_from(Some("sometimes"), None).unwrap_err();
        assert_eq!(err.var, "OTEL_TRACES_SAMPLER");
        for bad in ["1.5", "-0.1", "half"] {
            let err = sampler_from(None, Some(bad)).unwrap_err();
            assert_eq!(err.var, "OTEL_TRACES_SAMPLER_ARG", "{bad}");
            assert!(err.problem.contains(bad), "{err}");
        }
    }
}
