//! Starts the orders API: reads settings, starts logging, binds, and runs until Ctrl-C or
//! SIGTERM.

use anyhow::Context;
use common::{KafkaSettings, Settings};
use orders::OrdersSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = common::telemetry::init("orders")?;
    let kafka = KafkaSettings::from_env()?;
    let settings = OrdersSettings::from_env()?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding {}", settings.http_addr))?;
    orders::run(
        kafka,
        settings,
        listener,
        common::shutdown::shutdown_signal(),
    )
    .await
}
