//! The raw exactly-once copy loop: read `order_details`, write every record to another
//! topic and commit the offsets read in the same Kafka transaction, in batches as large as
//! the services' (`TRANSACTIONS_MAX_BATCH`), sent and committed as the services' loop does
//! (`common::kafka::exactly_once::{send, commit}`), and nothing else. What it reaches is the
//! ceiling of any exactly-once stage on this broker, against which transactions' and
//! analytics' own rates are read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::kafka::{self, exactly_once, read};
use common::{KafkaSettings, Topic};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::steady::{self, Measurement, Rate};

/// How long one transactional call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// What one copy run measured (`loadgen eos-copy`).
#[derive(Debug, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub destination: String,
    /// Records in the source when the clock started (the orders written, and the producer's
    /// warm-up record).
    pub messages: u64,
    /// Records copied, each in a committed transaction with its offset.
    pub copied: u64,
    pub max_batch: usize,
    pub transactions: u64,
    /// Records copied per second, from the first record read to the last commit.
    #[serde(flatten)]
    pub rate: Rate,
    /// Every record copied, none twice: the destination holds exactly `messages` records.
    pub complete: bool,
}

impl Measurement for CopyReport {
    fn rate(&self) -> &Rate {
        &self.rate
    }

    fn summary(&self) -> String {
        format!(
            "eos-copy: {} of {} records from {} to {} in {} transactions of at most {} in {:.2} s: {:.0} msg/s ({}; {})\n",
            self.copied,
            self.messages,
            self.source,
            self.destination,
            self.transactions,
            self.max_batch,
            self.rate.seconds,
            self.rate.per_second,
            self.rate.describe_steady(),
            if self.complete { "exact" } else { "INCOMPLETE" }
        )
    }
}

/// Writes `messages` orders to `<prefix>copy-<run>.order_details` (as `loadgen produce`
/// does), then copies every record of that topic to `<prefix>copy-<run>.order_details.copy`
/// exactly once, `max_batch` per transaction, and times the copy; gives up after `timeout`.
/// Every run has topics of its own, so it copies only what it wrote.
pub async fn eos_copy(
    kafka_settings: &KafkaSettings,
    messages: u64,
    max_batch: usize,
    price: Decimal,
    timeout: Duration,
) -> anyhow::Result<CopyReport> {
    let kafka_settings = &KafkaSettings {
        topic_prefix: format!(
            "{}copy-{:08x}.",
            kafka_settings.topic_prefix,
            rand::random::<u32>()
        ),
        ..kafka_settings.clone()
    };
    let source = kafka_settings.topics().name(Topic::OrderDetails);
    let destination = format!("{source}.copy");
    kafka::ensure_plain_topics(kafka_settings, std::slice::from_ref(&destination)).await?;
    let written = crate::bench::produce(kafka_settings, messages, 10_000, price).await?;
    anyhow::ensure!(
        written.failed == 0,
        "{} of {messages} records were not written to {source}",
        written.failed
    );
    // What the source holds: those orders and produce's warm-up record.
    let messages = count(kafka_settings, &source)?;
    let settings = kafka_settings.clone();
    let (src, dst) = (source.clone(), destination.clone());
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let (copied, timeline) = steady::sampled(
        move || done.load(Ordering::Relaxed),
        tokio::task::spawn_blocking(move || {
            let batches = (max_batch.max(1), &*counter);
            copy(&settings, (&src, &dst), messages, batches, timeout)
        }),
    )
    .await;
    let (copied, transactions, seconds) = copied.context("the copy loop panicked")??;
    // The commit's markers reach the partitions just after it returns: until they do, a
    // committed reader stops short of the last transaction.
    let settle = Instant::now() + Duration::from_secs(10);
    let mut in_destination = count(kafka_settings, &destination)?;
    while in_destination < messages && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
        in_destination = count(kafka_settings, &destination)?;
    }
    Ok(CopyReport {
        source,
        destination,
        messages,
        copied,
        max_batch,
        transactions,
        rate: Rate::of(copied, seconds, &timeline),
        complete: copied == messages && in_destination == messages,
    })
}

/// The loop, `max_batch` records per transaction at most, counting the records committed in
/// `done`: returns the records copied, the transactions committed and the seconds from the
/// first record read to the last commit.
fn copy(
    settings: &KafkaSettings,
    (source, destination): (&str, &str),
    messages: u64,
    (max_batch, done): (usize, &AtomicU64),
    timeout: Duration,
) -> anyhow::Result<(u64, u64, f64)> {
    // One name for this run's consumer group and transactional id.
    let run = settings
        .topics()
        .scoped(&format!("loadgen-copy-{:08x}", rand::random::<u32>()));
    let consumer = kafka::consumer(settings, "loadgen-copy", &run)?;
    read::assign_all(&consumer, source, read::Start::Beginning, TXN_TIMEOUT)?;
    let producer =
        kafka::transactional_producer(settings, "loadgen-copy", &run, Duration::from_secs(60))?;
    producer
        .init_transactions(TXN_TIMEOUT)
        .context("initialising the copy loop's transactions")?;
    let group = consumer
        .group_metadata()
        .context("the copy loop's consumer has no group metadata")?;

    let deadline = Instant::now() + timeout;
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(max_batch);
    let (mut copied, mut transactions, mut started) = (0u64, 0u64, None);
    while copied < messages {
        if Instant::now() > deadline {
            bail!("copied {copied} of {messages} records within {timeout:?}");
        }
        // A batch: whatever arrives, up to max_batch, until a poll comes back empty.
        batch.clear();
        let mut wait = Duration::from_millis(100);
        while batch.len() < max_batch {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(err)) => return Err(err).with_context(|| format!("reading {source}")),
            }
            wait = Duration::from_millis(1);
        }
        if batch.is_empty() {
            continue;
        }
        started.get_or_insert_with(Instant::now);
        producer.begin_transaction()?;
        let mut next: HashMap<i32, i64> = HashMap::new();
        for message in &batch {
            let mut record = BaseRecord::<[u8], [u8]>::to(destination)
                .payload(message.payload().unwrap_or_default());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            exactly_once::send(&producer, record).context("copying a record")?;
            next.insert(message.partition(), message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for (partition, offset) in next {
            offsets.add_partition_offset(source, partition, Offset::Offset(offset))?;
        }
        producer.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
        exactly_once::commit(&producer).context("committing a copy transaction")?;
        copied += batch.len() as u64;
        done.store(copied, Ordering::Relaxed);
        transactions += 1;
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    Ok((copied, transactions, seconds))
}

/// The committed records of `topic`.
fn count(settings: &KafkaSettings, topic: &str) -> anyhow::Result<u64> {
    let consumer = kafka::reader_to_end(
        settings,
        "loadgen-copy-check",
        &format!("loadgen-copy-check-{:08x}", rand::random::<u32>()),
        Duration::from_millis(10),
    )?;
    let partitions = read::assign_all(&consumer, topic, read::Start::Beginning, TXN_TIMEOUT)?;
    let mut records = 0;
    read::read_to_end(&consumer, topic, &partitions, TXN_TIMEOUT, |_| records += 1)?;
    Ok(records)
}
