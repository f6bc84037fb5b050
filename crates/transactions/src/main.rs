//! Starts the transactions service: reads settings, starts logging, and decides orders until
//! Ctrl-C or SIGTERM.

use common::{KafkaSettings, Settings};
use transactions::{RulesCheck, TransactionsSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = common::telemetry::init("transactions")?;
    let kafka = KafkaSettings::from_env()?;
    let settings = TransactionsSettings::from_env()?;
    let check = RulesCheck::from_env()?;
    transactions::run(kafka, settings, check, common::shutdown::shutdown_signal()).await
}
