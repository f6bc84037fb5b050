//! The `flatpack` operator command line: what an operator does by hand with a running
//! system, through the same Kafka clients and settings as the services.
//!
//! - [`dead_letters`]: list, show and replay the messages of a dead-letter topic.

pub mod dead_letters;

use std::io::Write;

use clap::{Parser, Subcommand};
use common::KafkaSettings;

/// flatpack's operator command line. Kafka settings come from the environment, as for the
/// services (KAFKA_BOOTSTRAP_SERVERS, KAFKA_CONFIG_*, FLATPACK_TOPIC_PREFIX).
#[derive(Debug, Parser)]
#[command(name = "flatpack", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dead-letter topics: list, show and replay the messages a service could not handle.
    #[command(subcommand)]
    DeadLetters(dead_letters::Command),
}

/// Runs `cli` against the cluster of `settings`, writing what it has to say to `out`.
pub fn run(cli: Cli, settings: &KafkaSettings, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::DeadLetters(command) => dead_letters::run(command, settings, out),
    }
}
