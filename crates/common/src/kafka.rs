//! Kafka clients, built in one place so that every service talks to the broker the same way.
//!
//! Producers are idempotent with `acks=all`; consumers read only committed messages and
//! never commit on their own. A [`FlatpackContext`] routes librdkafka's logs into `tracing`
//! and reports rebalances and commits.

use std::time::Duration;

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
use tracing::{debug, error, info, warn};

use crate::settings::KafkaSettings;
use crate::topics::Topic;

/// How long admin requests (topic creation, metadata) may take before start-up gives up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs librdkafka's messages, rebalances and commits through `tracing`.
#[derive(Debug, Clone)]
pub struct FlatpackContext {
    /// Which client this is, for the logs: "orders-producer", "transactions-consumer", ...
    pub client: &'static str,
}

impl ClientContext for FlatpackContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let client = self.client;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(client, facility = fac, "{message}"),
            RDKafkaLogLevel::Warning => warn!(client, facility = fac, "{message}"),
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
        // Connection failures are retried by librdkafka and reported once per outage.
        warn!(client = self.client, cause = %error, "{reason}");
    }
}

impl ProducerContext for FlatpackContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        // A failed delivery inside a transaction makes the commit fail, which aborts and
        // retries the whole batch; here it is only worth a log line.
        if let Err((err, msg)) = result {
            warn!(client = self.client, topic = msg.topic(), cause = %err, "delivery failed");
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
        .create_with_context(FlatpackContext { client })
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
        .create_with_context(FlatpackContext { client })
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
        .create_with_context(FlatpackContext { client })
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

/// [`consumer`] for async loops: the same configuration, read with `recv().await`.
pub fn stream_consumer(
    settings: &KafkaSettings,
    client: &'static str,
    group_id: &str,
) -> anyhow::Result<StreamConsumer<FlatpackContext>> {
    consumer_config(settings, client, group_id, &[])
        .create_with_context(FlatpackContext { client })
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
    // analytics_result holds the current totals as the latest record per day: compaction
    // keeps exactly those forever, where time-based retention would lose them.
    let compacted = settings.topics().name(Topic::AnalyticsResult);
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            if *name == compacted {
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
        .create_with_context(FlatpackContext {
            client: "topic-metadata",
        })
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

/// Creates what a consuming service needs: the topic it reads, that topic's dead-letter
/// topic, and the topic it writes.
pub async fn ensure_stage_topics(
    settings: &KafkaSettings,
    source: Topic,
    output: Topic,
) -> anyhow::Result<()> {
    let topics = settings.topics();
    ensure_topics(
        settings,
        &[topics.name(source), topics.dlq(source), topics.name(output)],
    )
    .await
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
/// (or where `auto.offset.reset` says when there is none).
pub fn assign_all_at_committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::Stored)?;
    }
    if assignment.count() == 0 {
        bail!("topic {topic} has no partitions");
    }
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
    let mut committed = consumer.committed_offsets(assignment, timeout)?;
    let never_committed: Vec<(String, i32)> = committed
        .elements()
        .iter()
        .filter(|e| e.offset() == rdkafka::Offset::Invalid)
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    for (topic, partition) in never_committed {
        // No committed offset yet: start where a fresh group would.
        committed.set_partition_offset(&topic, partition, rdkafka::Offset::Beginning)?;
    }
    consumer.seek_partitions(committed, timeout)?;
    Ok(())
}
