//! Creating the topics a service needs, and waiting for a broker that is not there yet: a
//! service started before its broker (or while it restarts) waits, saying what it waits
//! for, instead of giving up.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::{COMPLAINT_INTERVAL, FlatpackContext, Throttle, base_config};
use super::read::partitions_of;
use crate::settings::KafkaSettings;
use crate::topics::Topic;

/// How long admin requests (topic creation, metadata) may take before start-up gives up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The configuration of every compacted topic flatpack creates.
///
/// The broker compacts only closed segments, and its default segment is 1 GiB: a million
/// results of `analytics_result` (one per decision) would all stay in the active segment,
/// and every reader from the beginning (the dashboard, a service restoring a state store
/// without a copy on disk) would read them all. With 16 MiB segments, what such a reader
/// reads beyond one record per key is bounded by the segments not yet compacted; an hour
/// closes the active segment of a topic written slowly.
pub const COMPACTED_TOPIC_CONFIG: [(&str, &str); 3] = [
    ("cleanup.policy", "compact"),
    ("segment.bytes", "16777216"),
    ("segment.ms", "3600000"),
];

/// Creates the topics a service needs, with the configured partitions and replication
/// factor; topics that exist already are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, names: &[String]) -> anyhow::Result<()> {
    // analytics_result holds the current totals as the latest record per day, a changelog
    // the latest state per key: compaction keeps exactly those forever, where time-based
    // retention would lose them.
    let topics = settings.topics();
    create_missing(settings, names, |name| topics.is_compacted(name)).await
}

/// Creates `names` as [`ensure_topics`] does, but none compacted: for programs that write
/// records without a key (the seed's), which a compacted topic refuses.
pub async fn ensure_plain_topics(settings: &KafkaSettings, names: &[String]) -> anyhow::Result<()> {
    create_missing(settings, names, |_| false).await
}

async fn create_missing(
    settings: &KafkaSettings,
    names: &[String],
    compacted: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings)
        .create()
        .context("creating Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            if compacted(name) {
                COMPACTED_TOPIC_CONFIG
                    .iter()
                    .fold(topic, |topic, (key, value)| topic.set(key, value))
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
                Ok(i32::try_from(
                    partitions_of(&client, &topic, ADMIN_TIMEOUT)?.len(),
                )?)
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
