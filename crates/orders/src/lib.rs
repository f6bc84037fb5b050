//! The orders service: the HTTP API where customers place orders.
//!
//! `POST /order` takes the seed's request body, validates it at the edge, publishes the order
//! to `order_details` keyed by `order_id`, and answers `200` with the accepted order only after
//! the broker acknowledged the write. An `order_id` it accepted before is answered with the
//! order as first accepted (the same content) or `409` (other content), without a second
//! write; every instance knows what any accepted, from `order_details` itself ([`accepted`]).
//! `GET /healthz` says the process runs; `GET /readyz` says the broker answers and the orders
//! accepted before are read.

pub mod accepted;
mod api;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::kafka::{self, FlatpackContext};
use common::ops::Readiness;
use common::settings::{SettingsError, check_range, millis};
use common::{KafkaSettings, Settings, Topic};
use rdkafka::producer::{FutureProducer, Producer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::info;

pub use api::{ApiDoc, ErrorBody, Probe, router};

/// The orders service's own settings (the Kafka ones are shared: [`KafkaSettings`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OrdersSettings {
    /// `ORDERS_HTTP_ADDR`: where the API listens (the seed's port, 5002, by default).
    #[serde(rename = "orders_http_addr")]
    pub http_addr: SocketAddr,
    /// `ORDERS_PUBLISH_TIMEOUT_MS`: how long a request waits for the broker's acknowledgement
    /// before it is answered `503`.
    #[serde(rename = "orders_publish_timeout_ms", deserialize_with = "millis")]
    pub publish_timeout: Duration,
    /// `ORDERS_MAX_BODY_BYTES`: largest accepted request body.
    #[serde(rename = "orders_max_body_bytes")]
    pub max_body_bytes: usize,
    /// `ORDERS_INSTANCE_ID`: names this instance's index of accepted orders,
    /// `<FLATPACK_STORE_DIR>/orders-accepted-<id>.redb`; the same across its restarts, and
    /// unique among the instances on one machine (or one volume).
    #[serde(rename = "orders_instance_id")]
    pub instance_id: String,
}

impl Default for OrdersSettings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 5002)),
            publish_timeout: Duration::from_secs(10),
            max_body_bytes: 16 * 1024,
            instance_id: std::env::var("HOSTNAME").unwrap_or_else(|_| "orders-1".into()),
        }
    }
}

impl Settings for OrdersSettings {
    fn check(&self) -> Result<(), SettingsError> {
        check_range(
            "ORDERS_PUBLISH_TIMEOUT_MS",
            self.publish_timeout,
            Duration::from_millis(100)..=Duration::from_secs(120),
        )?;
        check_range(
            "ORDERS_MAX_BODY_BYTES",
            self.max_body_bytes,
            256..=16 * 1024 * 1024,
        )?;
        let id = &self.instance_id;
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(SettingsError::new(
                "ORDERS_INSTANCE_ID",
                "must be letters, digits, '-', '_' or '.' (it names a file)",
            ));
        }
        Ok(())
    }
}

/// What the request handlers share.
#[derive(Clone)]
pub struct AppState {
    producer: FutureProducer<FlatpackContext>,
    topic: Arc<str>,
    /// The broker answers the producer's metadata request for the topic.
    ready: Readiness,
    /// The orders accepted so far, by `order_id`.
    accepted: Arc<accepted::Accepted>,
    publish_timeout: Duration,
    max_body_bytes: usize,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the producer and opens the index of accepted orders (in `FLATPACK_STORE_DIR`).
    /// Does not contact the broker: a request does; [`run`] reads on into the index.
    pub fn new(kafka_settings: &KafkaSettings, settings: &OrdersSettings) -> anyhow::Result<Self> {
        let producer: FutureProducer<FlatpackContext> =
            kafka::producer(kafka_settings, "orders", settings.publish_timeout)?;
        let topic: Arc<str> = kafka_settings.topics().name(Topic::OrderDetails).into();
        let index = kafka_settings
            .store_dir
            .as_ref()
            .map(|dir| dir.join(format!("orders-accepted-{}.redb", settings.instance_id)));
        let accepted = Arc::new(
            accepted::Accepted::open(index.as_deref())
                .context("opening the index of accepted orders")?,
        );
        let ready: Readiness = {
            let (producer, topic, accepted) =
                (producer.clone(), Arc::clone(&topic), Arc::clone(&accepted));
            Arc::new(move || {
                accepted.caught_up()
                    && kafka::broker_answers(producer.client(), &topic, Duration::from_secs(2))
            })
        };
        Ok(Self {
            producer,
            topic,
            ready,
            accepted,
            publish_timeout: settings.publish_timeout,
            max_body_bytes: settings.max_body_bytes,
        })
    }
}

/// Serves the API on `listener` until `shutdown` completes, then flushes the producer.
pub async fn run(
    kafka_settings: KafkaSettings,
    settings: OrdersSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::new(&kafka_settings, &settings)?;
    // The API serves at once: while the broker is away `/readyz` says so and orders get 503.
    let topics_stop = tokio_util::sync::CancellationToken::new();
    let _stop_topics_on_return = topics_stop.clone().drop_guard();
    tokio::spawn({
        let (kafka_settings, names) = (kafka_settings.clone(), [state.topic.to_string()]);
        async move { kafka::await_topics(&kafka_settings, &names, &topics_stop).await }
    });
    let reading_stop = tokio_util::sync::CancellationToken::new();
    let _stop_reading_on_return = reading_stop.clone().drop_guard();
    let reader = accepted::follow(
        &kafka_settings,
        &state.topic,
        Arc::clone(&state.accepted),
        reading_stop.clone(),
    )?;
    let producer = state.producer.clone();
    let addr = listener.local_addr().context("reading the bound address")?;
    info!(%addr, "orders API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    info!("HTTP server stopped; flushing the producer");
    reading_stop.cancel();
    tokio::task::spawn_blocking(move || {
        // The reader writes what it read to the index, and makes it durable, as it stops.
        if reader.join().is_err() {
            tracing::error!("the reader of the accepted orders panicked");
        }
        producer.flush(Duration::from_secs(10))
    })
    .await
    .context("joining the flush")?
    .context("flushing the producer")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<OrdersSettings, SettingsError> {
        OrdersSettings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_instance_id_names_a_file_and_nothing_else() {
        let ok = settings(&[("ORDERS_INSTANCE_ID", "orders-2.eu_1")]).unwrap();
        assert_eq!(ok.instance_id, "orders-2.eu_1");
        for bad in ["", "../etc", "a/b", "orders 1"] {
            let err = settings(&[("ORDERS_INSTANCE_ID", bad)]).unwrap_err();
            assert!(
                err.to_string().contains("ORDERS_INSTANCE_ID"),
                "{bad:?}: {err}"
            );
        }
    }
}
