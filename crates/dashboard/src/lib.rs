//! The dashboard service: a live web page over all four topics.
//!
//! At every start it reads `order_details`, `order_confirmed`, `order_email_sent` and
//! `analytics_result` from the beginning (`read_committed`, committing nothing) into an
//! in-memory [`view::View`], and serves it: `GET /` is a page that updates itself over
//! Server-Sent Events (`GET /api/events`); `GET /api/orders/{id}`, `GET /api/orders` and
//! `GET /api/totals` give the same figures as JSON; `GET /healthz` says the process runs and
//! `GET /readyz` that the broker answers and the initial catch-up finished.

mod http;
mod reader;
pub mod view;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::kafka;
use common::settings::{SettingsError, check_range, millis};
use common::{KafkaSettings, Settings, Topic};
use rdkafka::consumer::Consumer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use http::{ApiDoc, router};
pub use reader::Shared;

/// The dashboard's own settings (the Kafka ones are shared: [`KafkaSettings`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DashboardSettings {
    /// `DASHBOARD_HTTP_ADDR`: where the page and API listen.
    #[serde(rename = "dashboard_http_addr")]
    pub http_addr: SocketAddr,
    /// `DASHBOARD_MAX_ORDERS`: how many of the latest orders the view keeps in memory (and
    /// how many of the latest records of each partition of the order topics a start reads).
    #[serde(rename = "dashboard_max_orders")]
    pub max_orders: usize,
    /// `DASHBOARD_STUCK_AFTER_MS`: an order waiting longer than this for its decision or its
    /// e-mail is flagged as stuck.
    #[serde(rename = "dashboard_stuck_after_ms", deserialize_with = "millis")]
    pub stuck_after: Duration,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            max_orders: 10_000,
            stuck_after: Duration::from_secs(60),
        }
    }
}

impl Settings for DashboardSettings {
    fn check(&self) -> Result<(), SettingsError> {
        check_range("DASHBOARD_MAX_ORDERS", self.max_orders, 1..=1_000_000)?;
        check_range(
            "DASHBOARD_STUCK_AFTER_MS",
            self.stuck_after,
            Duration::from_millis(100)..=Duration::from_secs(86_400),
        )
    }
}

/// Reads the topics and serves the dashboard on `listener` until `shutdown` completes.
pub async fn run(
    kafka_settings: KafkaSettings,
    settings: DashboardSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topics = kafka_settings.topics();
    let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
    let stop = CancellationToken::new();
    // The page serves (not ready) while the broker is away; the readers wait for the topics.
    tokio::spawn({
        let (kafka_settings, names, stop) = (kafka_settings.clone(), names.clone(), stop.clone());
        async move { kafka::await_topics(&kafka_settings, &names, &stop).await }
    });

    let view = view::View::new(settings.max_orders, settings.stuck_after.as_secs_f64());
    let shared = Arc::new(Shared::new(view));
    let mut readers = Vec::new();
    let mut consumers = Vec::new();
    for (topic, name) in Topic::ALL.into_iter().zip(names) {
        let consumer = Arc::new(reader::consumer(&kafka_settings, topic)?);
        consumers.push(Arc::clone(&consumer));
        let (shared, stop) = (Arc::clone(&shared), stop.clone());
        let start = reader::start(topic, settings.max_orders);
        readers.push(tokio::task::spawn_blocking(move || {
            reader::read_topic(&consumer, topic, &name, start, &shared, &stop);
        }));
    }
    readers.push(tokio::task::spawn_blocking({
        let (kafka_settings, shared, stop) =
            (kafka_settings.clone(), Arc::clone(&shared), stop.clone());
        move || watch::watch(&kafka_settings, &shared, &stop)
    }));
    let state = http::AppState {
        shared,
        broker_ready: {
            let (probe, topic) = (Arc::clone(&consumers[0]), topics.name(Topic::OrderDetails));
            Arc::new(move || kafka::broker_answers(probe.client(), &topic, Duration::from_secs(2)))
        },
        stop: stop.clone(),
    };

    let addr = listener.local_addr().context("reading the bound address")?;
    info!(%addr, "dashboard listening");
    let stop_on_shutdown = stop.clone();
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Ends the live streams too, so that graceful shutdown does not wait on them.
            stop_on_shutdown.cancel();
        })
        .await
        .context("serving HTTP");
    stop.cancel();
    for reader in readers {
        if let Err(err) = reader.await {
            error!(cause = %err, "a topic reader panicked");
        }
    }
    info!("dashboard stopped");
    served
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use common::settings::vars;

    #[test]
    fn settings_default_to_port_8000_and_ten_thousand_orders() {
        let settings = DashboardSettings::from_vars(vars(&[])).unwrap();
        assert_eq!(settings.http_addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(settings.max_orders, 10_000);
        let settings = DashboardSettings::from_vars(vars(&[
            ("DASHBOARD_HTTP_ADDR", "127.0.0.1:9000"),
            ("DASHBOARD_MAX_ORDERS", "50"),
        ]))
        .unwrap();
        assert_eq!(settings.http_addr.port(), 9000);
        assert_eq!(settings.max_orders, 50);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (var, value) in [
            ("DASHBOARD_HTTP_ADDR", "port eight thousand"),
            ("DASHBOARD_MAX_ORDERS", "many"),
            ("DASHBOARD_MAX_ORDERS", "0"),
        ] {
            let err = DashboardSettings::from_vars(vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}: {err}");
        }
    }
}
