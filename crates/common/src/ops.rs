//! What an operator scrapes and probes: Prometheus metrics at `GET /metrics`, liveness at
//! `GET /healthz`, readiness at `GET /readyz`.
//!
//! Every service records its metrics through the `metrics` facade into one process-wide
//! Prometheus recorder ([`metrics_handle`]). The orders API and the dashboard serve
//! [`api_routes`] (these three and `/openapi.json`) beside their own routes; transactions,
//! analytics and email, which have no HTTP API, serve [`router`] on an address of their own
//! (`<SERVICE>_OPS_ADDR`). The README lists every metric.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::kafka::{self, FlatpackContext};
use crate::settings::KafkaSettings;

/// Histogram buckets for the `*_seconds` metrics: from a millisecond to ten minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Histogram buckets for batch sizes (messages per transaction).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The process's Prometheus recorder, installed on first use (or by [`install_metrics`]);
/// `None` when metrics are off.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    install_metrics(true)
}

/// Installs the process's metrics recorder once, or, with `enabled` false (the
/// `FLATPACK_METRICS=off` of [`crate::telemetry`]), none: every metric is then a no-op and
/// `/metrics` answers `404`. Later calls return what the first one installed.
pub fn install_metrics(enabled: bool) -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            if !enabled {
                return None;
            }
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_messages".into()), BATCH_BUCKETS)
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                // Only an empty bucket list is refused, and the lists above are not empty.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // A recorder installed before (a test that runs several services in one
            // process) keeps recording; this handle then renders what it holds.
            let _ = metrics::set_global_recorder(recorder);
            Some(handle)
        })
        .clone()
}

/// Whether the service can do its work now (for `/readyz`).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Ready while the broker answers a metadata request for `topic`.
pub fn broker_readiness(settings: &KafkaSettings, topic: String) -> anyhow::Result<Readiness> {
    let client: BaseConsumer<FlatpackContext> = kafka::base_config(settings)
        .create_with_context(FlatpackContext::new("readiness"))
        .context("creating a Kafka client for the readiness probe")?;
    let client = Arc::new(client);
    Ok(Arc::new(move || {
        kafka::broker_answers(client.client(), &topic, Duration::from_secs(2))
    }))
}

/// Asks `ready` on a blocking thread (a broker probe waits up to seconds), for a handler.
pub async fn is_ready(ready: &Readiness) -> bool {
    let ready = Arc::clone(ready);
    tokio::task::spawn_blocking(move || ready())
        .await
        .unwrap_or(false)
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format.",
            body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are off (`FLATPACK_METRICS=off`).",
            body = Object, content_type = "application/json"),
    )
)]
pub async fn metrics() -> Response {
    match metrics_handle() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "metrics are off (FLATPACK_METRICS=off)" })),
        )
            .into_response(),
    }
}

/// What `/healthz` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    pub status: &'static str,
}

/// Liveness: the process serves. Every service's `/healthz`.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive.", body = Alive)))]
pub async fn healthz() -> axum::Json<Alive> {
    axum::Json(Alive { status: "ok" })
}

/// `/metrics`, `/healthz`, and `readyz` at `/readyz`.
fn probes<S, H, T>(readyz: H) -> Router<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `/metrics`, `/healthz` and `/readyz` for a service without an HTTP API of its own.
pub fn router(ready: Readiness) -> Router {
    probes(readyz).with_state(ready)
}

/// What an HTTP API serves beside its own routes: `/metrics`, `/healthz`, its own
/// readiness `readyz` at `/readyz`, and its OpenAPI document `doc` at `/openapi.json`. The
/// document lists them when its `OpenApi` derive has `paths(readyz, ...)` and
/// `modifiers(&common::ops::ApiProbes)`.
pub fn api_routes<S, H, T>(readyz: H, doc: Document) -> Router<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let doc = Router::new()
        .route("/openapi.json", get(openapi_json))
        .with_state(Arc::new(doc));
    probes(readyz).merge(doc)
}

/// This document: the API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document.", body = Object))
)]
async fn openapi_json(State(doc): State<Arc<Document>>) -> axum::Json<Document> {
    axum::Json(Document::clone(&doc))
}

/// The paths of [`api_routes`] but the service's own `/readyz`.
#[derive(OpenApi)]
#[openapi(paths(healthz, metrics, openapi_json))]
struct ProbesDoc;

/// Adds `/healthz`, `/metrics` and `/openapi.json` of [`api_routes`] to a service's
/// OpenAPI document: `#[openapi(paths(readyz, ...), modifiers(&common::ops::ApiProbes))]`.
#[derive(Debug)]
pub struct ApiProbes;

impl Modify for ApiProbes {
    fn modify(&self, doc: &mut Document) {
        doc.merge(ProbesDoc::openapi());
    }
}

async fn readyz(State(ready): State<Readiness>) -> Response {
    if is_ready(&ready).await {
        (StatusCode::OK, axum::Json(json!({ "status": "ready" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({ "status": "not ready", "error": "the message broker does not answer" }),
            ),
        )
            .into_response()
    }
}

/// Serves [`router`] on `addr` until `stop` is cancelled. Binding fails at once (a clear
/// error naming the address); serving then runs on its own task.
pub async fn serve(
    addr: SocketAddr,
    ready: Readiness,
    stop: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics and health address {addr}"))?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz and /readyz");
    Ok(async move {
        let serving =
            axum::serve(listener, router(ready)).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(err) = serving.await {
            tracing::warn!(cause = %err, "the metrics and health server stopped");
        }
    })
}

/// Metrics of work done inside a Kafka transaction: recorded when it commits, dropped when
/// it aborts, so that a batch read again after an abort is not counted twice.
#[derive(Debug, Default)]
pub struct Tally {
    /// (metric, label name, label value) → how many since the last commit or abort: one
    /// counter update per series at commit, not one per message.
    counts: Vec<((&'static str, &'static str, &'static str), u64)>,
    /// (stage, seconds since the order was accepted).
    ages: Vec<(&'static str, f64)>,
}

impl Tally {
    /// Counts one of `metric{label=value}`.
    pub fn count(&mut self, metric: &'static str, label: &'static str, value: &'static str) {
        let series = (metric, label, value);
        // A handful of series at most: a scan beats hashing.
        match self.counts.iter_mut().find(|(known, _)| *known == series) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((series, 1)),
        }
    }

    /// Notes that an order accepted at `order_time` (epoch seconds) reached `stage` now.
    pub fn reached(&mut self, stage: &'static str, order_time: f64) {
        let age = (crate::events::now_epoch_seconds() - order_time).max(0.0);
        self.ages.push((stage, age));
    }

    /// The transaction committed: record everything noted since the last commit or abort.
    pub fn commit(&mut self) {
        for ((metric, label, value), n) in self.counts.drain(..) {
            metrics::counter!(metric, label => value).increment(n);
        }
        for (stage, age) in self.ages.drain(..) {
            record_order_age(stage, age);
        }
    }

    /// The transaction aborted: forget what was noted since the last commit or abort.
    pub fn abort(&mut self) {
        self.counts.clear();
        self.ages.clear();
    }
}

/// Records how long after its acceptance an order reached `stage`
/// (`flatpack_order_age_seconds{stage}`).
pub fn record_order_age(stage: &'static str, age_seconds: f64) {
    metrics::histogram!("flatpack_order_age_seconds", "stage" => stage).record(age_seconds);
}
