//! Logging, traces and the metrics recorder (see [`crate::ops`]), set up once in `main`.
//!
//! Logs: human-readable lines by default, JSON lines with `LOG_FORMAT=json`; the level filter
//! comes from `RUST_LOG` (default `info`); colours only on a terminal, so that log files (the
//! supervisor's, the tests') read as plain text.
//!
//! Traces: every service makes spans for the work of each order of a sampled trace
//! ([`crate::traces`]: `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, by default 1 % of
//! new traces and every trace a caller sampled) and exports them with OpenTelemetry OTLP over
//! HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! under the service's name unless `OTEL_SERVICE_NAME` says otherwise; the other standard
//! `OTEL_*` variables apply (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_BSP_*`, ...). Without an endpoint nothing is exported, but the spans and the trace
//! context on every Kafka record are there all the same. `OTEL_SDK_DISABLED=true` turns
//! traces off altogether, and `FLATPACK_METRICS=off` the metrics (for measuring what they
//! cost).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace exporter running; dropping it exports the spans still buffered (for at
/// most a few seconds). Hold it in `main` until the service stopped.
#[must_use = "dropping it stops the trace export"]
#[derive(Debug)]
pub struct Telemetry {
    traces: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(err) = self.traces.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(cause = %err, "exporting the last spans failed");
        }
    }
}

/// Installs the global subscriber (logs and traces) and the metrics recorder. Call once,
/// first thing in `main`.
pub fn init(service: &'static str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") | Err(_) => false,
        Ok(other) => {
            bail!("invalid setting LOG_FORMAT: expected text or json, found {other:?}")
        }
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let logs = if json {
        logs.json().flatten_event(true).boxed()
    } else {
        logs.boxed()
    };
    let metrics = match std::env::var("FLATPACK_METRICS").as_deref() {
        Ok("on") | Err(_) => true,
        Ok("off") => false,
        Ok(other) => bail!("invalid setting FLATPACK_METRICS: expected on or off, found {other:?}"),
    };
    let sampler = crate::traces::sampler_from_env()?;
    let traces = tracer_provider(service)?;
    // Spans at info and above, whatever RUST_LOG says: they carry the trace context on.
    // Of the log events only warnings and errors go into the spans, and no span records
    // where in the code or on which thread it ran, nor its idle time: every order makes four
    // spans, and what they cost is measured (scripts/bench.sh --steps telemetry).
    // None at all with OTEL_SDK_DISABLED=true (then no record carries trace context).
    let spans = (!sdk_disabled()).then(|| spans_layer(&traces, service));
    crate::traces::set_sampler((!sdk_disabled()).then_some(sampler));
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init()
        .map_err(|err| anyhow::anyhow!("installing the log subscriber: {err}"))?;
    // Metrics recorded before the recorder exists are lost: install it first thing too.
    crate::ops::install_metrics(metrics);
    let traces_to = match otlp_endpoint() {
        _ if sdk_disabled() => "off".to_owned(),
        Some(endpoint) => endpoint,
        None => "not exported".to_owned(),
    };
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        traces = %traces_to,
        metrics = if metrics { "on" } else { "off" },
        "starting"
    );
    Ok(Telemetry { traces })
}

/// The layer that turns spans into OpenTelemetry spans: spans at INFO and above, and events
/// at WARN and above (recorded on their span).
///
/// Its filter asks about every span and event each time (`Interest::sometimes`) rather than
/// once per callsite: a per-layer filter learns whether it enabled a span from a thread-local
/// note left by the last `enabled` call, which a callsite cached as always enabled never
/// makes, so the note could be a stale one left by an unrelated question (a `log` record
/// passed through `tracing-log` asks without a callsite) and the span went untraced
/// (tokio-rs/tracing#2519). Seen as an order's request answered with an all-zero trace id.
fn spans_layer<S>(traces: &SdkTracerProvider, service: &'static str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(traces.tracer(service))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(dynamic_filter_fn(|meta, _| {
            let level = *meta.level();
            if meta.is_span() {
                level <= Level::INFO
            } else {
                level <= Level::WARN
            }
        }))
}

/// `OTEL_SDK_DISABLED=true`: no spans, no trace context, nothing exported.
fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Where spans go: the traces endpoint, else the general one; `None` when neither is set.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
}

/// The tracer provider: with an OTLP/HTTP exporter when an endpoint is set, else one that
/// makes spans (and so trace context) without exporting them.
fn tracer_provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    // Every span made is one the sampler of `crate::traces` chose, before making it: the
    // SDK records them all (and does not sample again by OTEL_TRACES_SAMPLER itself).
    let builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build());
    if otlp_endpoint().is_none() || sdk_disabled() {
        return Ok(builder.build());
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        match std::env::var(name).as_deref() {
            Err(_) | Ok("" | "http/protobuf") => {}
            Ok(other) => bail!(
                "invalid setting {name}: flatpack exports traces over http/protobuf only, found {other:?}"
            ),
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context(
            "invalid setting OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)",
        )?;
    Ok(builder.with_batch_exporter(exporter).build())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;
    use tracing::callsite::{Callsite, Identifier};
    use tracing::metadata::Kind;
    use tracing::subscriber::Interest;
    use tracing::{Metadata, info_span};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::*;

    /// What a `log` record at DEBUG is to `tracing`: metadata asked about without a cached
    /// callsite interest (`tracing-log` makes such questions).
    struct LogRecord;
    static LOG_RECORD: LogRecord = LogRecord;
    static LOG_RECORD_METADATA: Metadata<'static> = Metadata::new(
        "log record",
        "some_crate",
        Level::DEBUG,
        None,
        None,
        None,
        tracing::field::FieldSet::new(&[], Identifier(&LOG_RECORD)),
        Kind::EVENT,
    );
    impl Callsite for LogRecord {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &LOG_RECORD_METADATA
        }
    }

    #[test]
    fn a_span_is_traced_whatever_the_filters_were_asked_before_it() {
        let traces = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::sink)
                    .with_filter(EnvFilter::new("info")),
            )
            .with(spans_layer(&traces, "test"));
        tracing::subscriber::with_default(subscriber, || {
            for round in 0..3 {
                tracing::dispatcher::get_default(|dispatch| dispatch.enabled(&LOG_RECORD_METADATA));
                let span = info_span!("request");
                let context = span.context();
                assert!(
                    context.span().span_context().is_valid(),
                    "round {round}: the span has no trace"
                );
            }
        });
    }
}
