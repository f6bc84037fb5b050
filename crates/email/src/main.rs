//! Starts the email service: reads settings, starts logging, and e-mails decided orders until
//! Ctrl-C or SIGTERM.

use common::{KafkaSettings, Settings};
use email::EmailSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = common::telemetry::init("email")?;
    let kafka = KafkaSettings::from_env()?;
    let settings = EmailSettings::from_env()?;
    email::run(kafka, settings, common::shutdown::shutdown_signal()).await
}
