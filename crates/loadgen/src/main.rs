//! `loadgen`: posts orders to a running flatpack and follows them through the pipeline.
//! Kafka settings come from the environment, as for the services (`KAFKA_BOOTSTRAP_SERVERS`,
//! `FLATPACK_TOPIC_PREFIX`, ...). Exits 1 when anything was lost, duplicated or miscounted.
//!
//! Subcommands for `scripts/bench.sh`: `produce` (the broker's raw produce capacity),
//! `eos-copy` (the raw exactly-once copy loop, an exactly-once stage's ceiling), `smtp`
//! (the SMTP server's acceptance rate, settings as the email service's `SMTP_*`), `feed`
//! (a pipeline's rate from `order_details` to `analytics_result`) and `topics` (plain topics
//! for the seed).

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::{KafkaSettings, Settings};
use loadgen::steady::{self, Measurement, Sizing};
use loadgen::{Config, Downstream, bench, copy};
use rust_decimal::Decimal;

/// Posts orders to flatpack's orders API and follows them through every topic.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    post: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Writes orders, as the orders service writes them, straight to `order_details` with the
    /// services' idempotent `acks=all` producer: the broker's raw produce capacity.
    Produce {
        /// How many messages.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Unacknowledged messages at most.
        #[arg(long, default_value_t = 10_000)]
        in_flight: usize,
        /// The price in every order (sets the message size with the rest of the order).
        #[arg(long, default_value = "19.99")]
        price: Decimal,
        #[command(flatten)]
        out: Output,
    },
    /// Writes orders to `order_details` (as `produce`), then copies them to another topic
    /// exactly once, committing the offsets read in each transaction, `--max-batch` per
    /// transaction: the ceiling of an exactly-once stage on this broker. Exits 1 when a
    /// record is missing or doubled
    EosCopy {
        /// How many records.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Most records per transaction (the services' `TRANSACTIONS_MAX_BATCH`).
        #[arg(long, default_value_t = 5_000)]
        max_batch: usize,
        /// The price in every order.
        #[arg(long, default_value = "19.99")]
        price: Decimal,
        /// Seconds the copy may take before it counts as failed.
        #[arg(long, default_value_t = 300)]
        timeout_seconds: u64,
        #[command(flatten)]
        out: Output,
    },
    /// Sends order confirmations with the email service's sender (settings from `SMTP_*`, as
    /// for the email service): the SMTP server's own acceptance rate.
    Smtp {
        /// How many e-mails.
        #[arg(long, default_value_t = 2000)]
        emails: u64,
        /// Senders, each on a connection of its own.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// The price in every order.
        #[arg(long, default_value = "19.99")]
        price: Decimal,
        #[command(flatten)]
        out: Output,
    },
    /// Writes decided orders straight to `order_confirmed` and times until every one is on
    /// `order_email_sent`: the e-mail stage's rate. Exits 1 when one is missing.
    EmailStage {
        /// How many decisions (after the warm-up).
        #[arg(long, default_value_t = 5_000)]
        emails: u64,
        /// Warm-up decisions, e-mailed before the clock starts (at least the email
        /// service's EMAIL_CONCURRENCY, so that every SMTP connection is open).
        #[arg(long, default_value_t = 64)]
        warmup: u64,
        #[command(flatten)]
        pacing: bench::Pacing,
        #[command(flatten)]
        out: Output,
    },
    /// Writes orders straight to `order_details` and times until `analytics_result` counts
    /// them all: a pipeline's rate (flatpack's or the seed's). Exits 1 when the count is off.
    Feed {
        /// How many orders (after the warm-up).
        #[arg(long, default_value_t = 10_000)]
        orders: u64,
        /// The price of every order: a whole number, as the seed's analytics reads it with
        /// `int(...)`.
        #[arg(long, default_value = "349")]
        price: Decimal,
        #[command(flatten)]
        pacing: bench::Pacing,
        #[command(flatten)]
        out: Output,
    },
    /// Creates plain topics (after `FLATPACK_TOPIC_PREFIX`, with `FLATPACK_TOPIC_PARTITIONS`
    /// and `FLATPACK_TOPIC_REPLICATION_FACTOR`); existing ones are left alone.
    Topics {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Posting orders over HTTP (the default command).
#[derive(Debug, clap::Args)]
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
    follow: Vec<Downstream>,
    /// Follow no topic: measure the POSTs only (for an orders API alone).
    #[arg(long, conflicts_with = "follow")]
    no_follow: bool,
    /// Seconds to wait after the last POST for the orders to arrive downstream.
    #[arg(long, default_value_t = 60)]
    settle_seconds: u64,
    #[command(flatten)]
    out: Output,
}

/// How a measurement is sized and where its report goes.
#[derive(Debug, clap::Args)]
struct Output {
    #[command(flatten)]
    sizing: Sizing,
    /// Where to write the JSON report (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Writes `report` as pretty JSON to `path` (`-`: stdout).
fn write_json(path: Option<&PathBuf>, report: &impl serde::Serialize) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let json = serde_json::to_string_pretty(report)?;
    if path.as_os_str() == "-" {
        writeln!(std::io::stdout(), "{json}")?;
    } else {
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs a measurement of `items` (or as many as its probe says), prints its summary, writes
/// its JSON (with the probe that sized it), and exits 1 unless `ok` says the report is.
async fn measure<R, F>(
    out: Output,
    items: u64,
    run: impl FnMut(u64) -> F,
    ok: impl FnOnce(&R) -> bool,
) -> anyhow::Result<()>
where
    R: Measurement + serde::Serialize,
    F: Future<Output = anyhow::Result<R>>,
{
    let sized = steady::sized(out.sizing, items, run).await?;
    eprint!("{}", sized.report.summary());
    write_json(out.json.as_ref(), &sized)?;
    if !ok(&sized.report) {
        std::process::exit(1);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => post(cli.post).await,
        Some(Command::Produce {
            messages,
            in_flight,
            price,
            out,
        }) => {
            let kafka = KafkaSettings::from_env()?;
            let run = |n| bench::produce(&kafka, n, in_flight, price);
            measure(out, messages, run, |r| r.failed == 0).await
        }
        Some(Command::EosCopy {
            messages,
            max_batch,
            price,
            timeout_seconds,
            out,
        }) => {
            let (kafka, timeout) = (
                KafkaSettings::from_env()?,
                Duration::from_secs(timeout_seconds),
            );
            let run = |n| copy::eos_copy(&kafka, n, max_batch, price, timeout);
            measure(out, messages, run, |r| r.complete).await
        }
        Some(Command::Smtp {
            emails,
            concurrency,
            price,
            out,
        }) => {
            let settings = email::EmailSettings::from_env()?;
            let run = |n| bench::smtp(&settings, n, concurrency, price);
            measure(out, emails, run, |r| r.failed == 0).await
        }
        Some(Command::Feed {
            orders,
            price,
            pacing,
            out,
        }) => {
            let kafka = KafkaSettings::from_env()?;
            let run = |n| bench::feed(&kafka, n, price, pacing);
            measure(out, orders, run, |r| r.complete).await
        }
        Some(Command::EmailStage {
            emails,
            warmup,
            pacing,
            out,
        }) => {
            let kafka = KafkaSettings::from_env()?;
            let run = |n| bench::email_stage(&kafka, n, warmup, pacing);
            measure(out, emails, run, |r| r.complete).await
        }
        Some(Command::Topics { names }) => {
            let kafka = KafkaSettings::from_env()?;
            bench::create_topics(&kafka, &names).await
        }
    }
}

async fn post(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.rate.is_none_or(|r| r > 0.0 && r.is_finite()),
        "--rate must be a positive number"
    );
    anyhow::ensure!(
        args.rate.is_none() || args.out.sizing.steady_seconds.is_none(),
        "--steady-seconds sizes a run as fast as it goes; at a --rate, --orders sets its length"
    );
    let kafka = KafkaSettings::from_env()?;
    let config = |orders| Config {
        url: args.url.clone(),
        orders,
        rate: args.rate,
        concurrency: args.concurrency,
        price: args.price,
        follow: if args.no_follow {
            Vec::new()
        } else {
            args.follow.clone()
        },
        settle_timeout: Duration::from_secs(args.settle_seconds),
        // Every run its own order ids: a probe's would be the measurement's again.
        run_id: format!("load-{:08x}", rand::random::<u32>()),
    };
    let run = |orders| {
        let config = config(orders);
        let kafka = &kafka;
        async move { loadgen::run(&config, kafka).await }
    };
    measure(args.out, args.orders, run, loadgen::Report::is_clean).await
}
