//! Kafka clients, built in one place so that every service talks to the broker the same way.
//!
//! Producers are idempotent with `acks=all`; consumers read only committed messages and
//! never commit on their own. A [`FlatpackContext`] routes librdkafka's logs into `tracing`
//! and reports rebalances and commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, FutureProducer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{TopicPartitionList, consumer::Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::settings::KafkaSettings;
use crate::topics::Topic;

/// How long admin requests (topic creation, metadata) may take before start-up gives up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

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
}

impl FlatpackContext {
    pub fn new(client: &'static str) -> Self {
        Self {
            client,
            complaints: Arc::default(),
            rebalances: Arc::default(),
        }
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
    let fetch_wait = fetch_wait.as_millis().to_string();
    consumer_with(
        settings,
        client,
        group_id,
        &[
            ("enable.partition.eof", "true"),
            ("fetch.wait.max.ms", &fetch_wait),
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
    set_default(&mut config, "client.id", client);
    config
}

/// Creates the topics a service needs, with the configured partitions and replication
/// factor; topics that exist already are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, names: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings)
        .create()
        .context("creating Kafka admin client")?;
    // analytics_result holds the current totals as the latest record per day, a changelog
    // the latest state per key: compaction keeps exactly those forever, where time-based
    // retention would lose them.
    let topics = settings.topics();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            if topics.is_compacted(name) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Timeout::After(ADMIN_TIMEOUT)));
    let results = tokio::time::timeout(ADMIN_TIMEOUT, admin.create_topics(&new_topics, &options))
        .await
        .with_context(|| {
            format!(
                "no answer from Kafka at {} within {ADMIN_TIMEOUT:?} while creating topics",
                settings.bootstrap_servers
            )
        })?
        .with_context(|| format!("creating topics {names:?}"))?;
    for result in results {
        match result {
            Ok(name) => info!(topic = %name, partitions = settings.partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    // A topic just created can be missing from the broker's metadata for a moment; whoever
    // reads its partitions next (a consumer assigning them all) must not find none.
    let (settings, names) = (settings.clone(), names.to_vec());
    tokio::task::spawn_blocking(move || await_partitions(&settings, &names, ADMIN_TIMEOUT))
        .await
        .context("the topic metadata check panicked")?
}

/// Waits until the metadata of every topic in `names` lists its partitions.
fn await_partitions(
    settings: &KafkaSettings,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let client: BaseConsumer<FlatpackContext> = base_config(settings)
        .create_with_context(FlatpackContext::new("topic-metadata"))
        .context("creating a Kafka client for topic metadata")?;
    let deadline = std::time::Instant::now() + timeout;
    for name in names {
        loop {
            let listed = client
                .fetch_metadata(Some(name), timeout)
                .map(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                })
                .unwrap_or(false);
            if listed {
                break;
            }
            if std::time::Instant::now() >= deadline {
                bail!("topic {name} still has no partitions {timeout:?} after it was created");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// [`ensure_topics`] again and again until it succeeds: a service started before its broker
/// (or while it restarts) waits for it, saying what it waits for, instead of giving up.
/// Returns `false` when `stop` came first.
pub async fn await_topics(
    settings: &KafkaSettings,
    names: &[String],
    stop: &CancellationToken,
) -> bool {
    const PAUSE: Duration = Duration::from_secs(1);
    let mut throttle = Throttle::new(COMPLAINT_INTERVAL);
    loop {
        let err = tokio::select! {
            () = stop.cancelled() => return false,
            result = ensure_topics(settings, names) => match result {
                Ok(()) => return true,
                Err(err) => err,
            },
        };
        if let Some(held_back) = throttle.admit() {
            warn!(bootstrap = %settings.bootstrap_servers, cause = %format!("{err:#}"), held_back, "waiting for Kafka to create or find the topics");
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(PAUSE) => {}
        }
    }
}

/// Runs the blocking `attempt` until it succeeds, pausing between tries and saying
/// (throttled) what it waits for: for the calls that cannot go on without the broker.
/// Returns `None` when `stop` came first.
pub fn retry_until_ok<T>(
    what: &str,
    stop: &CancellationToken,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> Option<T> {
    const PAUSE: Duration = Duration::from_millis(500);
    let mut throttle = Throttle::new(COMPLAINT_INTERVAL);
    loop {
        if stop.is_cancelled() {
            return None;
        }
        match attempt() {
            Ok(value) => return Some(value),
            Err(err) => {
                if let Some(held_back) = throttle.admit() {
                    warn!(cause = %format!("{err:#}"), held_back, "waiting for Kafka: {what}");
                }
            }
        }
        let until = Instant::now() + PAUSE;
        while Instant::now() < until && !stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits (see [`await_topics`]) for a changelog topic of `source`'s state with as many
/// partitions as `source` has, each partition of the changelog holding the state of the
/// same partition of `source`. `false` when `stop` came first.
pub async fn await_changelog(
    settings: &KafkaSettings,
    source: &str,
    changelog: &str,
    stop: &CancellationToken,
) -> bool {
    let (reader, topic, stopping) = (settings.clone(), source.to_owned(), stop.clone());
    let counted = tokio::task::spawn_blocking(move || {
        let client: BaseConsumer<FlatpackContext> = base_config(&reader)
            .create_with_context(FlatpackContext::new("topic-metadata"))
            .context("creating a Kafka client for topic metadata")
            .ok()?;
        retry_until_ok(
            &format!("counting the partitions of {topic}"),
            &stopping,
            || {
                let metadata = client.fetch_metadata(Some(&topic), ADMIN_TIMEOUT)?;
                let count = metadata
                    .topics()
                    .iter()
                    .map(|t| t.partitions().len())
                    .sum::<usize>();
                anyhow::ensure!(count > 0, "topic {topic} has no partitions yet");
                Ok(i32::try_from(count)?)
            },
        )
    })
    .await;
    let Ok(Some(partitions)) = counted else {
        return false;
    };
    let mut settings = settings.clone();
    settings.partitions = partitions;
    await_topics(&settings, &[changelog.to_owned()], stop).await
}

/// Waits (see [`await_topics`]) for what a consuming service needs: the topic it reads,
/// that topic's dead-letter topic, and the topic it writes. `false` when `stop` came first.
pub async fn await_stage_topics(
    settings: &KafkaSettings,
    source: Topic,
    output: Topic,
    stop: &CancellationToken,
) -> bool {
    let topics = settings.topics();
    let names = [topics.name(source), topics.dlq(source), topics.name(output)];
    await_topics(settings, &names, stop).await
}

/// Asks the cluster for the metadata of `topic`: the readiness probe of every service.
pub fn broker_answers<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> bool {
    client.fetch_metadata(Some(topic), timeout).is_ok()
}

/// Assigns every partition of `topic` to `consumer`, each at the group's committed offset
/// (or at the beginning when there is none).
///
/// The committed offsets are read here, and an error returned if they cannot be: assigned
/// at `Offset::Stored` instead, a partition whose offsets librdkafka failed to fetch (the
/// group's coordinator still loading after a broker start) was never read from at all.
pub fn assign_all_at_committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions.add_partition(topic, partition.id());
    }
    if partitions.count() == 0 {
        bail!("topic {topic} has no partitions");
    }
    let assignment = committed_or_beginning(consumer, partitions, timeout)
        .with_context(|| format!("reading the committed offsets of {topic}"))?;
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning the partitions of {topic}"))?;
    info!(partitions = %describe(&assignment), "partitions assigned");
    Ok(())
}

/// Seeks every assigned partition back to its committed offset (or the beginning when the
/// group has none), so that the messages of an aborted transaction are read again.
pub fn rewind_to_committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
) -> KafkaResult<()> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(());
    }
    let committed = committed_or_beginning(consumer, assignment, timeout)?;
    // Each partition's seek can fail on its own, reported only in the list returned: a
    // partition left where it was would skip the messages of the aborted transaction.
    let sought = consumer.seek_partitions(committed, timeout)?;
    match sought.elements().iter().find_map(|e| e.error().err()) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// The group's committed offset of each of `partitions`, or the beginning (where a fresh
/// group starts) for those it never committed.
fn committed_or_beginning<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: TopicPartitionList,
    timeout: Duration,
) -> KafkaResult<TopicPartitionList> {
    let mut committed = consumer.committed_offsets(partitions, timeout)?;
    if let Some(err) = committed.elements().iter().find_map(|e| e.error().err()) {
        return Err(err);
    }
    let never_committed: Vec<(String, i32)> = committed
        .elements()
        .iter()
        .filter(|e| e.offset() == rdkafka::Offset::Invalid)
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    for (topic, partition) in never_committed {
        committed.set_partition_offset(&topic, partition, rdkafka::Offset::Beginning)?;
    }
    Ok(committed)
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
}
