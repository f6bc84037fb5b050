//! Kafka clients, built in one place so that every service talks to the broker the same way.
//!
//! Producers are idempotent with `acks=all`; consumers read only committed messages and
//! never commit on their own. A [`FlatpackContext`] routes librdkafka's logs into `tracing`
//! and reports rebalances and commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{counter, gauge};
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{
    DeliveryResult, FutureProducer, ProducerContext, future_producer::Delivery,
};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, info, warn};

use crate::settings::KafkaSettings;

/// How often one kind of repeated complaint (a broker that does not answer, a reconnect
/// that fails) may reach the log while it lasts.
pub const COMPLAINT_INTERVAL: Duration = Duration::from_secs(10);

/// Lets a repeated log line through once per interval, and counts what it held back.
///
/// While a broker is away, librdkafka reports every failed reconnect and every poll returns
/// an error; a line for each would bury what matters. The first line of an outage goes out
/// at once; later ones at most once per interval, saying how many were held back.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when a line may go out now (`n` lines were held back since the last one),
    /// `None` when this one is held back.
    pub fn admit(&mut self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// Logs librdkafka's messages, rebalances and commits through `tracing`.
#[derive(Debug, Clone)]
pub struct FlatpackContext {
    /// Which client this is, for the logs: "orders-producer", "transactions-consumer", ...
    pub client: &'static str,
    /// One throttle per kind of warning or error, so that an outage is a few lines.
    complaints: Arc<Mutex<HashMap<String, Throttle>>>,
    /// Rebalances seen (a consumer's): who keeps state per partition reloads it after one.
    rebalances: Arc<AtomicU64>,
    /// Records reported delivered without an offset (a producer's); see [`acknowledged`].
    unacknowledged: Arc<AtomicU64>,
    /// Where the records the broker acknowledged went (a producer's).
    written: Arc<Mutex<Written>>,
}

/// The next offset after the last record acknowledged, per topic and partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written(HashMap<String, HashMap<i32, i64>>);

impl Written {
    /// Notes a record acknowledged at `offset`.
    pub fn note(&mut self, topic: &str, partition: i32, offset: i64) {
        let partitions = match self.0.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.0.entry(topic.to_owned()).or_default(),
        };
        let next = partitions.entry(partition).or_default();
        *next = (*next).max(offset + 1);
    }

    /// The next offset after the last record written to each partition of `topic`.
    pub fn next_offsets(&self, topic: &str) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0
            .get(topic)
            .into_iter()
            .flat_map(|partitions| partitions.iter().map(|(p, o)| (*p, *o)))
    }
}

impl FlatpackContext {
    pub fn new(client: &'static str) -> Self {
        Self {
            client,
            complaints: Arc::default(),
            rebalances: Arc::default(),
            unacknowledged: Arc::default(),
            written: Arc::default(),
        }
    }

    /// Where this producer's acknowledged records went since the last call; starts over.
    pub fn take_written(&self) -> Written {
        std::mem::take(&mut self.written.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many records this producer reported delivered without an offset since the last
    /// call (see [`acknowledged`]); resets the count.
    pub fn take_unacknowledged(&self) -> u64 {
        self.unacknowledged.swap(0, Ordering::AcqRel)
    }

    /// How many rebalances (assignments or revocations) this consumer went through.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Acquire)
    }

    /// `Some(held back)` when a complaint of this kind may be logged now.
    fn admit(&self, kind: &str) -> Option<u64> {
        let mut complaints = self
            .complaints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        complaints
            .entry(kind.to_owned())
            .or_insert_with(|| Throttle::new(COMPLAINT_INTERVAL))
            .admit()
    }
}

impl ClientContext for FlatpackContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let client = self.client;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if let Some(held_back) = self.admit(fac) {
                    error!(client, facility = fac, held_back, "{message}")
                }
            }
            RDKafkaLogLevel::Warning => {
                if let Some(held_back) = self.admit(fac) {
                    warn!(client, facility = fac, held_back, "{message}")
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(client, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => debug!(client, facility = fac, "{message}"),
        }
    }

    /// librdkafka's statistics (consumers ask for them every few seconds): how far each
    /// assigned partition's reading lags behind its last stable offset.
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for partition in topic.partitions.values() {
                if partition.partition < 0 || !partition.desired {
                    continue;
                }
                if partition.ls_offset >= 0 && partition.app_offset >= 0 {
                    let lag = (partition.ls_offset - partition.app_offset).max(0);
                    gauge!(
                        "flatpack_consumer_lag",
                        "client" => self.client,
                        "topic" => topic.topic.clone(),
                        "partition" => partition.partition.to_string()
                    )
                    .set(lag as f64);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Asked for (enable.partition.eof) by readers that read to the end; not a fault. It
        // comes as a global error too.
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        // librdkafka retries connection failures by itself and reports each attempt.
        let kind = format!("{:?}", error.rdkafka_error_code());
        if let Some(held_back) = self.admit(&kind) {
            warn!(client = self.client, cause = %error, held_back, "{reason}");
        }
    }
}

impl ProducerContext for FlatpackContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        // A failed delivery inside a transaction makes the commit fail, which aborts and
        // retries the whole batch; here it is only worth a log line (records dropped by an
        // abort not even that).
        if let Ok(msg) = result
            && msg.offset() >= 0
        {
            self.written
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .note(msg.topic(), msg.partition(), msg.offset());
        }
        if let Ok(msg) = result
            && msg.offset() < 0
        {
            self.unacknowledged.fetch_add(1, Ordering::AcqRel);
            if let Some(held_back) = self.admit("unacknowledged") {
                warn!(
                    client = self.client,
                    topic = msg.topic(),
                    partition = msg.partition(),
                    held_back,
                    "{UNACKNOWLEDGED}"
                );
            }
        }
        if let Err((err, msg)) = result {
            if err.rdkafka_error_code() == Some(RDKafkaErrorCode::PurgeQueue) {
                debug!(
                    client = self.client,
                    topic = msg.topic(),
                    "record dropped by an abort"
                );
            } else if let Some(held_back) = self.admit("delivery") {
                warn!(client = self.client, topic = msg.topic(), cause = %err, held_back, "delivery failed");
            }
        }
    }
}

impl ConsumerContext for FlatpackContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                info!(client = self.client, partitions = %describe(tpl), "partitions revoked")
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(err) => warn!(client = self.client, cause = %err, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        if let Rebalance::Assign(tpl) = rebalance {
            info!(client = self.client, partitions = %describe(tpl), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                debug!(client = self.client, offsets = %describe(offsets), "offsets committed")
            }
            Err(err) => warn!(client = self.client, cause = %err, "offset commit failed"),
        }
    }
}

/// `topic[partition]@offset, ...` for logs.
pub fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `client`'s consumer is in a fatal state and must be replaced: the group fenced it
/// (another consumer joined with its `group.instance.id`, or it rejoined after its session
/// expired while the broker was away), and it reads nothing more. Says so, and counts it.
pub fn consumer_must_be_replaced<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    service: &'static str,
) -> bool {
    let Some((code, reason)) = client.fatal_error() else {
        return false;
    };
    warn!(service, ?code, cause = %reason, "the consumer cannot go on; replacing it and reading from the committed offsets");
    counter!("flatpack_consumers_replaced_total", "service" => service).increment(1);
    true
}

/// Why a record reported delivered without an offset does not count as written.
const UNACKNOWLEDGED: &str = "record reported delivered without an offset: the broker never acknowledged it (librdkafka took a later record's acknowledgement for it), so it is treated as not written";

/// The delivery, when the broker acknowledged the record with its offset.
///
/// librdkafka reports a record delivered without an offset when it takes a later record's
/// acknowledgement for it: it assumes the earlier request was written and only its answer
/// lost. On a partition whose leader was not ready yet, the earlier request was refused
/// (`NOT_LEADER_OR_FOLLOWER`), the broker accepted the later one first (it takes any first
/// sequence number from a producer it does not know), and the earlier records were never
/// written: seen here as orders answered `200` that never reached `order_details`. So such a
/// delivery is an error, and the record is to be sent again (a copy is decided once).
pub fn acknowledged(delivery: Delivery) -> Result<Delivery, KafkaError> {
    if delivery.offset < 0 {
        warn!(partition = delivery.partition, "{UNACKNOWLEDGED}");
        return Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
        ));
    }
    Ok(delivery)
}

/// The base configuration every client starts from: where the brokers are, plus any
/// pass-through properties (SASL, SSL, ...).
pub fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers);
    for (key, value) in &settings.client_config {
        config.set(key, value);
    }
    // librdkafka waits up to 10 s between attempts to reach a broker that went away, so a
    // service noticed a restarted broker up to 10 s late; a second is plenty of backoff.
    set_default(&mut config, "reconnect.backoff.max.ms", "1000");
    config
}

/// Sets `key` unless the operator already did through `KAFKA_CONFIG_*`.
fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

/// An idempotent, `acks=all` producer for request/response paths: a send resolves once the
/// broker acknowledged it, or fails after `delivery_timeout`.
pub fn producer(
    settings: &KafkaSettings,
    client: &'static str,
    delivery_timeout: Duration,
) -> anyhow::Result<FutureProducer<FlatpackContext>> {
    let mut config = base_config(settings);
    config.set("enable.idempotence", "true").set("acks", "all");
    config.set(
        "message.timeout.ms",
        delivery_timeout.as_millis().to_string(),
    );
    set_default(&mut config, "linger.ms", "2");
    set_default(&mut config, "client.id", client);
    config
        .create_with_context(FlatpackContext::new(client))
        .with_context(|| format!("creating Kafka producer {client}"))
}

/// A transactional producer for consume-transform-produce. `transactional_id` must stay the
/// same across restarts of one instance, so that a restarted instance fences its former self
/// and aborts its open transaction at once.
pub fn transactional_producer(
    settings: &KafkaSettings,
    client: &'static str,
    transactional_id: &str,
    transaction_timeout: Duration,
) -> anyhow::Result<rdkafka::producer::BaseProducer<FlatpackContext>> {
    let mut config = base_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transactional.id", transactional_id)
        .set(
            "transaction.timeout.ms",
            transaction_timeout.as_millis().to_string(),
        );
    set_default(&mut config, "linger.ms", "5");
    // Right after a commit the coordinator answers the next transaction's first request with
    // CONCURRENT_TRANSACTIONS until the commit markers are written, which takes milliseconds;
    // librdkafka's default 100 ms backoff would add that much to every transaction.
    set_default(&mut config, "retry.backoff.ms", "10");
    set_default(&mut config, "client.id", client);
    config
        .create_with_context(FlatpackContext::new(client))
        .with_context(|| format!("creating transactional Kafka producer {transactional_id}"))
}

/// A consumer in `group_id` that reads only committed messages, starts at the earliest
/// offset when the group has none, and never commits or stores offsets by itself.
pub fn consumer(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
) -> anyhow::Result<BaseConsumer<FlatpackContext>> {
    consumer_with(settings, client, group_id, &[])
}

/// [`consumer`] with extra properties.
pub fn consumer_with(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<BaseConsumer<FlatpackContext>> {
    consumer_config(settings, client, group_id, extra)
        .create_with_context(FlatpackContext::new(client))
        .with_context(|| format!("creating Kafka consumer {client} in group {group_id}"))
}

/// A [`consumer`] for reading topics to their end: it reports reaching the end of each
/// partition (`enable.partition.eof`), and a fetch with nothing new comes back after
/// `fetch_wait` rather than librdkafka's default 500 ms, which a reader of a quiet or empty
/// topic would otherwise wait out, once per fetch, before it learns it is at the end.
pub fn reader_to_end(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
    fetch_wait: Duration,
) -> anyhow::Result<BaseConsumer<FlatpackContext>> {
    reader(settings, client, group_id, fetch_wait, "1")
}

/// A [`reader_to_end`] that goes on following its topic where a tenth of a second of lag
/// costs nothing (orders' index of accepted orders, the dashboard). Each fetch waits until
/// the broker has 64 KiB for it or `fetch_wait` passed, where a plain reader's fetch returns
/// with the first record: at 1,000 orders/s over six partitions that was a fetch, and a
/// wake-up of the reader and of the broker, for every record or two.
pub fn follower(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
    fetch_wait: Duration,
) -> anyhow::Result<BaseConsumer<FlatpackContext>> {
    reader(settings, client, group_id, fetch_wait, "65536")
}

/// A reader to the end whose fetches wait for `min_bytes` or `fetch_wait`.
fn reader(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
    fetch_wait: Duration,
    min_bytes: &str,
) -> anyhow::Result<BaseConsumer<FlatpackContext>> {
    let fetch_wait = fetch_wait.as_millis().to_string();
    consumer_with(
        settings,
        client,
        group_id,
        &[
            ("enable.partition.eof", "true"),
            ("fetch.wait.max.ms", &fetch_wait),
            ("fetch.min.bytes", min_bytes),
        ],
    )
}

/// [`consumer_with`] for async loops: the same configuration, read with `recv().await`.
pub fn stream_consumer(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<StreamConsumer<FlatpackContext>> {
    consumer_config(settings, client, group_id, extra)
        .create_with_context(FlatpackContext::new(client))
        .with_context(|| format!("creating Kafka consumer {client} in group {group_id}"))
}

fn consumer_config(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
    extra: &[(&str, &str)],
) -> ClientConfig {
    let mut config = base_config(settings);
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    set_default(&mut config, "auto.offset.reset", "earliest");
    // What librdkafka fetches ahead of the application: by default up to 100,000 messages
    // or 64 MB per consumer, which a backlog fills, and which stays in the process's memory
    // after. A few thousand orders ahead keep every stage busy (one transaction takes at
    // most a few hundred).
    set_default(&mut config, "queued.min.messages", "5000");
    set_default(&mut config, "queued.max.messages.kbytes", "4096");
    // Those bounds are checked before a fetch, and one fetch may bring up to 50 MB (1 MB per
    // partition) past them: a reader catching up on six partitions held 26 MB of fetch
    // buffers and 70,000 messages. 1 MB a fetch (256 KB per partition) is some thousands of
    // orders, and fetches follow each other as long as the queue is below its bounds.
    set_default(&mut config, "fetch.max.bytes", "1048576");
    set_default(&mut config, "max.partition.fetch.bytes", "262144");
    // With the queue that small, a reader (a restore, the dashboard) fills it in an instant,
    // and librdkafka then waits a whole second by default before it fetches that partition
    // again: reads went ten times slower.
    set_default(&mut config, "fetch.queue.backoff.ms", "10");
    // For the consumer-lag gauge (see `FlatpackContext::stats`).
    set_default(&mut config, "statistics.interval.ms", "5000");
    set_default(&mut config, "client.id", client);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_the_first_line_through_then_one_per_interval_counting_the_rest() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit_at(start), Some(0));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(9)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(10)), Some(2));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn a_delivery_counts_as_written_only_with_the_offset_the_broker_gave_it() {
        use rdkafka::Timestamp;
        let delivery = |offset| Delivery {
            partition: 2,
            offset,
            timestamp: Timestamp::NotAvailable,
        };
        assert_eq!(acknowledged(delivery(0)).map(|d| d.offset), Ok(0));
        assert_eq!(acknowledged(delivery(17)).map(|d| d.offset), Ok(17));
        // librdkafka's "implicitly acknowledged": RD_KAFKA_OFFSET_INVALID.
        assert!(acknowledged(delivery(-1001)).is_err());
        assert!(acknowledged(delivery(-1)).is_err());
    }
}
