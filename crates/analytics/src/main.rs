//! Starts the analytics service: reads settings, starts logging, and counts decisions until
//! Ctrl-C or SIGTERM.

use analytics::AnalyticsSettings;
use common::{KafkaSettings, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = common::telemetry::init("analytics")?;
    let kafka = KafkaSettings::from_env()?;
    let settings = AnalyticsSettings::from_env()?;
    analytics::run(kafka, settings, common::shutdown::shutdown_signal()).await
}
