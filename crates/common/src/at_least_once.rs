//! The at-least-once consume-act-produce loop, for services whose work has a side effect
//! outside Kafka (an e-mail sent, a page pushed) that no Kafka transaction can undo.
//!
//! A service supplies a [`Handler`]: the side effect for one decoded input, and the records
//! that say it happened. The loop does the rest: poll, decode (a message that does not decode
//! goes to the source's dead-letter topic, as in [`crate::pipeline`]), run the handler
//! (retrying with capped exponential backoff, never skipping the input), write its records
//! with the idempotent `acks=all` producer, and only then store and commit the input's
//! offset. A crash between the side effect and the commit repeats the side effect after the
//! restart, unless the service names its output topic in [`AtLeastOnceConfig::handled`]: the
//! loop then reads that topic's keys on start and after every partition assignment, and skips
//! inputs whose key is already there. A restart or rebalance thus repeats nothing in the
//! normal case; only a crash inside the narrow window between the side effect and the
//! acknowledgement of its record does.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::kafka::{self, FlatpackContext};
use crate::pipeline::{Output, decode_or_dead_letter};
use crate::settings::KafkaSettings;
use crate::topics::Topic;

/// How long reading the handled keys to the end of their topic may take.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long shutdown may spend committing offsets and flushing the producer.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a service does with each message of its source topic.
pub trait Handler: Send + 'static {
    /// The message type of the source topic.
    type Input: DeserializeOwned + Send + Sync;

    /// The key the records for `input` are written under. With
    /// [`AtLeastOnceConfig::handled`] set, an input whose key is already on that topic was
    /// handled before and is skipped.
    fn key(&self, input: &Self::Input) -> String;

    /// Does the work for one input and returns the records that say so. An error means "not
    /// done, try again": the loop retries with backoff until it succeeds or the loop is
    /// stopped; it never moves past the input. A failure that retrying cannot fix must be
    /// returned as `Ok` with records that say so.
    fn handle(
        &mut self,
        input: &Self::Input,
    ) -> impl Future<Output = anyhow::Result<Vec<Output>>> + Send;
}

/// Capped exponential backoff: `initial`, twice that, four times, ..., at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (counted from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How one at-least-once loop runs.
#[derive(Debug, Clone)]
pub struct AtLeastOnceConfig {
    /// The service, for logs, client ids and DLQ headers.
    pub service: &'static str,
    /// The topic read.
    pub source: Topic,
    /// The consumer group (shared by all instances of the service).
    pub group_id: String,
    /// The topic whose record keys mark inputs as handled (the loop's own output), or `None`
    /// to handle every input however often it is read.
    pub handled: Option<Topic>,
    /// Waits between attempts of a failed handler or a failed write.
    pub retry: Backoff,
    /// How long one write may wait for the broker's acknowledgement.
    pub delivery_timeout: Duration,
}

/// Runs `handler` over the source topic until `stop` is cancelled, at least once.
///
/// On stop, the message in hand is finished if its handler is running (a retry wait is cut
/// short instead, leaving the message unhandled and uncommitted), the handled offsets are
/// committed, and the producer is flushed. Returns `Err` only when the loop cannot start
/// or cannot keep its promise (the handled keys cannot be read).
pub async fn run_at_least_once<H: Handler>(
    settings: &KafkaSettings,
    config: &AtLeastOnceConfig,
    mut handler: H,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let topics = settings.topics();
    let source = topics.name(config.source);
    let dlq = topics.dlq(config.source);
    let consumer = Arc::new(kafka::stream_consumer(
        settings,
        config.service,
        &config.group_id,
    )?);
    let producer = kafka::producer(settings, config.service, config.delivery_timeout)?;
    let mut handled = match config.handled {
        Some(topic) => {
            let keys = HandledKeys::new(settings, config, topics.name(topic));
            Some(keys.catch_up().await?)
        }
        None => None,
    };
    consumer
        .subscribe(&[&source])
        .with_context(|| format!("subscribing to {source}"))?;
    info!(service = config.service, topic = %source, group = %config.group_id, "consuming at least once");

    let mut assignment = Vec::new();
    loop {
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => message.detach(),
            Err(err) => {
                warn!(service = config.service, cause = %err, "consumer error");
                continue;
            }
        };
        // A rebalance (run inside `recv`) may have handed us partitions whose inputs another
        // instance handled: learn what it wrote before handling anything from them.
        let now = assigned(&consumer);
        if now != assignment {
            assignment = now;
            if let Some(keys) = handled.take() {
                handled = Some(keys.catch_up().await?);
            }
        }
        let done = process(
            &message,
            &dlq,
            config,
            &mut handler,
            handled.as_mut(),
            &producer,
            stop,
        )
        .await;
        if !done {
            break;
        }
        let stored = consumer.store_offset(message.topic(), message.partition(), message.offset());
        match stored.and_then(|()| consumer.commit_consumer_state(CommitMode::Async)) {
            Ok(()) => {}
            // The partition went to another instance meanwhile; it skips what we handled.
            Err(err) => {
                warn!(service = config.service, partition = message.partition(), offset = message.offset(), cause = %err, "offset not committed");
            }
        }
    }

    info!(
        service = config.service,
        "stopping: committing handled offsets"
    );
    tokio::task::spawn_blocking(move || {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => warn!(cause = %err, "committing offsets on shutdown failed"),
        }
        consumer.unsubscribe();
        producer
            .flush(SHUTDOWN_TIMEOUT)
            .context("flushing the producer on shutdown")
    })
    .await
    .context("the shutdown task panicked")?
}

/// The partitions assigned right now, sorted.
fn assigned(consumer: &StreamConsumer<FlatpackContext>) -> Vec<(String, i32)> {
    let mut partitions: Vec<(String, i32)> = consumer
        .assignment()
        .map(|tpl| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        })
        .unwrap_or_default();
    partitions.sort();
    partitions
}

/// Handles one message (or dead-letters it). `false` when the loop was stopped before the
/// message was completely handled: its offset must not be stored.
async fn process<H: Handler>(
    message: &OwnedMessage,
    dlq: &str,
    config: &AtLeastOnceConfig,
    handler: &mut H,
    handled: Option<&mut HandledKeys>,
    producer: &FutureProducer<FlatpackContext>,
    stop: &CancellationToken,
) -> bool {
    let input = match decode_or_dead_letter::<H::Input>(message, dlq, config.service) {
        Ok(input) => input,
        Err(dead) => {
            return deliver(producer, config, stop, || dead.future_record()).await;
        }
    };
    let key = handler.key(&input);
    if handled.as_ref().is_some_and(|h| h.keys.contains(&key)) {
        info!(service = config.service, key = %key, "handled before; skipping");
        return true;
    }
    let Some(outputs) = handle_with_retry(handler, &input, &key, config, stop).await else {
        info!(service = config.service, key = %key, "stopped before it was handled; not committed");
        return false;
    };
    for output in &outputs {
        let record = || {
            FutureRecord::to(&output.topic)
                .key(output.key.as_str())
                .payload(output.payload.as_slice())
        };
        if !deliver(producer, config, stop, record).await {
            warn!(service = config.service, key = %key, "stopped before its record was acknowledged; it will be handled again");
            return false;
        }
    }
    debug!(service = config.service, key = %key, "handled");
    if let Some(handled) = handled {
        handled.keys.insert(key);
    }
    true
}

/// Runs the handler until it succeeds; `None` when stopped first.
async fn handle_with_retry<H: Handler>(
    handler: &mut H,
    input: &H::Input,
    key: &str,
    config: &AtLeastOnceConfig,
    stop: &CancellationToken,
) -> Option<Vec<Output>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match handler.handle(input).await {
            Ok(outputs) => return Some(outputs),
            Err(err) => err,
        };
        if stop.is_cancelled() {
            return None;
        }
        let delay = config.retry.delay(attempt);
        warn!(service = config.service, key = %key, attempt, retry_in = ?delay, cause = %format!("{err:#}"), "handling failed; retrying");
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Writes a record, retrying until the broker acknowledges it; `false` when stopped first.
async fn deliver<'a>(
    producer: &FutureProducer<FlatpackContext>,
    config: &AtLeastOnceConfig,
    stop: &CancellationToken,
    record: impl Fn() -> FutureRecord<'a, str, [u8]>,
) -> bool {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match producer
            .send(record(), Timeout::After(config.delivery_timeout))
            .await
        {
            Ok(_) => return true,
            Err((err, _)) => err,
        };
        if stop.is_cancelled() {
            return false;
        }
        let delay = config.retry.delay(attempt);
        warn!(service = config.service, topic = record().topic, attempt, retry_in = ?delay, cause = %err, "write not acknowledged; retrying");
        tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The keys on a topic: which inputs were handled, by this instance or any other.
///
/// Every key stays in memory (one short string per handled input); reads after the first
/// start where the previous one stopped.
#[derive(Debug)]
struct HandledKeys {
    settings: KafkaSettings,
    service: &'static str,
    group_id: String,
    topic: String,
    keys: HashSet<String>,
    /// Where the next read of each partition starts.
    next: HashMap<i32, i64>,
}

impl HandledKeys {
    fn new(settings: &KafkaSettings, config: &AtLeastOnceConfig, topic: String) -> Self {
        Self {
            settings: settings.clone(),
            service: config.service,
            group_id: format!("{}-handled-reader", config.group_id),
            topic,
            keys: HashSet::new(),
            next: HashMap::new(),
        }
    }

    /// Reads every partition of the topic to its current end (committed records only).
    async fn catch_up(mut self) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let before = self.keys.len();
            self.read_to_end()?;
            info!(service = self.service, topic = %self.topic, keys = self.keys.len(), new = self.keys.len() - before, elapsed = ?started.elapsed(), "handled keys read");
            Ok(self)
        })
        .await
        .context("the handled-keys reader panicked")?
    }

    fn read_to_end(&mut self) -> anyhow::Result<()> {
        // A fresh consumer each time: it reports the end of each partition once it gets
        // there, also when it starts there. It never joins its group nor commits.
        let consumer = kafka::consumer_with(
            &self.settings,
            self.service,
            &self.group_id,
            &[("enable.partition.eof", "true")],
        )
        .context("creating the handled-keys reader")?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), CATCH_UP_TIMEOUT)
            .with_context(|| format!("reading the partitions of {}", self.topic))?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let offset = self
                .next
                .get(&partition.id())
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            assignment.add_partition_offset(&self.topic, partition.id(), offset)?;
        }
        let partitions = assignment.count();
        if partitions == 0 {
            bail!("topic {} has no partitions", self.topic);
        }
        consumer.assign(&assignment)?;
        let mut at_end = HashSet::new();
        let until = Instant::now() + CATCH_UP_TIMEOUT;
        while at_end.len() < partitions {
            if Instant::now() > until {
                bail!(
                    "reading {} to its end took longer than {CATCH_UP_TIMEOUT:?}",
                    self.topic
                );
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    if let Some(key) = message.key() {
                        self.keys.insert(String::from_utf8_lossy(key).into_owned());
                    }
                    self.next.insert(message.partition(), message.offset() + 1);
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition);
                }
                Some(Err(err)) => {
                    warn!(service = self.service, topic = %self.topic, cause = %err, "reading handled keys");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        let delays: Vec<u64> = (1..=9)
            .map(|n| backoff.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(30));
    }
}
