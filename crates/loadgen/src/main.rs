//! `loadgen`: posts orders to a running flatpack and follows them through the pipeline.
//! Kafka settings come from the environment, as for the services (`KAFKA_BOOTSTRAP_SERVERS`,
//! `FLATPACK_TOPIC_PREFIX`, ...). Exits 1 when anything was lost, duplicated or miscounted.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::KafkaSettings;
use loadgen::{Config, Stage};
use rust_decimal::Decimal;

/// Posts orders to flatpack's orders API and follows them through every topic.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Base URL of the orders API.
    #[arg(long, default_value = "http://127.0.0.1:5002")]
    url: String,
    /// How many orders to post.
    #[arg(long, default_value_t = 1000)]
    orders: u64,
    /// Orders per second (omit to post as fast as the connections allow).
    #[arg(long)]
    rate: Option<f64>,
    /// Requests in flight, each on its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The price of every order.
    #[arg(long, default_value = "19.99")]
    price: Decimal,
    /// Topics to follow the orders to.
    #[arg(long, value_delimiter = ',', default_values = ["order-confirmed", "order-email-sent", "analytics-result"])]
    follow: Vec<StageArg>,
    /// Seconds to wait after the last POST for the orders to arrive downstream.
    #[arg(long, default_value_t = 60)]
    settle_seconds: u64,
    /// Where to write the JSON report (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StageArg {
    OrderConfirmed,
    OrderEmailSent,
    AnalyticsResult,
}

impl From<StageArg> for Stage {
    fn from(arg: StageArg) -> Self {
        match arg {
            StageArg::OrderConfirmed => Stage::OrderConfirmed,
            StageArg::OrderEmailSent => Stage::OrderEmailSent,
            StageArg::AnalyticsResult => Stage::AnalyticsResult,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.rate.is_none_or(|r| r > 0.0 && r.is_finite()),
        "--rate must be a positive number"
    );
    let kafka = KafkaSettings::from_env()?;
    let config = Config {
        url: args.url,
        orders: args.orders,
        rate: args.rate,
        concurrency: args.concurrency,
        price: args.price,
        follow: args.follow.into_iter().map(Stage::from).collect(),
        settle_timeout: Duration::from_secs(args.settle_seconds),
        run_id: format!("load-{:08x}", rand::random::<u32>()),
    };
    let report = loadgen::run(&config, &kafka).await?;
    eprint!("{}", report.summary());
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            writeln!(std::io::stdout(), "{json}")?;
        } else {
            std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if !report.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}
