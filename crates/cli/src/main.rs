//! `flatpack`: the operator's command line. Kafka settings come from the environment, as for
//! the services (`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_CONFIG_*`, `FLATPACK_TOPIC_PREFIX`, ...).
//! Exits 1 with a message on standard error when the command cannot be done, 2 on bad usage.

use std::process::ExitCode;

use clap::Parser;
use common::{KafkaSettings, Settings};
use flatpack_cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = KafkaSettings::from_env()
        .map_err(anyhow::Error::from)
        .and_then(|settings| flatpack_cli::run(cli, &settings, &mut std::io::stdout().lock()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
