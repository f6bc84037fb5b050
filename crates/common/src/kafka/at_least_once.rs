//! The at-least-once consume-act-produce loop, for services whose work has a side effect
//! outside Kafka (an e-mail sent, a page pushed) that no Kafka transaction can undo.
//!
//! A service supplies a [`Handler`]: the side effect for one decoded input, and the records
//! that say it happened. The loop does the rest: poll, decode (a message that does not decode
//! goes to the source's dead-letter topic, as in [`super::exactly_once`]), run the handler
//! (retrying with capped exponential backoff, never skipping the input), write its records
//! with the idempotent `acks=all` producer, and only then store and commit the input's
//! offset. Up to [`AtLeastOnceConfig::concurrency`] inputs are handled at once (a side effect
//! is mostly waiting on another server); they finish in any order, but offsets are stored in
//! the order the inputs came, so a committed offset never passes an unfinished input.
//!
//! A crash between the side effect and the commit repeats the side effect after the
//! restart, unless the service names its output topic in [`AtLeastOnceConfig::handled`]: the
//! loop then reads that topic's keys on start and after every partition assignment into a
//! [`Store`] (which keeps them after the topic's retention deleted their records), and skips
//! inputs whose key is already there (or is being handled right now). It reads on every
//! [`AtLeastOnceConfig::handled_read_interval`] while it writes, so that the copy's
//! checkpoints move past its own records and a restart need not read them again. A restart
//! or rebalance thus repeats nothing in the normal case; only a crash inside the narrow
//! window between a side effect and the acknowledgement of its record does, for the inputs
//! in hand then.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use metrics::counter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use serde::de::DeserializeOwned;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::dead_letter::{DeadLetter, decode_or_log};
use super::exactly_once::Output;
use super::state::Store;
use crate::kafka::{self, COMPLAINT_INTERVAL, FlatpackContext, Throttle, retry_until_ok};
use crate::settings::KafkaSettings;
use crate::topics::Topic;
use crate::traces::{self, Traced};

/// How long shutdown may spend committing offsets and flushing the producer.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often stored offsets are committed while inputs keep coming.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// What a service does with each message of its source topic.
pub trait Handler: Send + Sync + 'static {
    /// The message type of the source topic.
    type Input: DeserializeOwned + Send + Sync + 'static;

    /// The key the records for `input` are written under. With
    /// [`AtLeastOnceConfig::handled`] set, an input whose key is already on that topic was
    /// handled before and is skipped.
    fn key(&self, input: &Self::Input) -> String;

    /// Does the work for one input and returns the records that say so. An error means "not
    /// done, try again": the loop retries with backoff until it succeeds or the loop is
    /// stopped; it never moves past the input. A failure that retrying cannot fix must be
    /// returned as `Ok` with records that say so. Called for several inputs at once.
    fn handle(
        &self,
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
    /// Stable per instance across restarts, unique among running instances: the instance's
    /// static group membership (`group.instance.id`), so that a restarted instance takes its
    /// partitions back at once instead of waiting for the group to expire its former self.
    /// `None`: a new member at every start.
    pub instance_id: Option<String>,
    /// The topic whose record keys mark inputs as handled (the loop's own output), or `None`
    /// to handle every input however often it is read.
    pub handled: Option<Topic>,
    /// How often the handled keys are read on from where the last read stopped. The keys of
    /// this instance's own records go into the copy at once, but the copy's checkpoints
    /// move only as far as a read got (another instance may have written before them), so a
    /// restart reads again what was written since the last read: at most this long's worth.
    pub handled_read_interval: Duration,
    /// Most inputs handled at once (at least 1).
    pub concurrency: usize,
    /// Waits between attempts of a failed handler or a failed write.
    pub retry: Backoff,
    /// How long one write may wait for the broker's acknowledgement.
    pub delivery_timeout: Duration,
}

/// One input, handled (or not, when the loop stopped first): where its offset goes.
#[derive(Debug)]
struct Finished {
    topic: String,
    partition: i32,
    offset: i64,
    /// The input's key while it was in hand; `None` for a dead letter or a skipped input.
    key: Option<String>,
    /// `false` when the loop was stopped before the input was completely handled: neither
    /// its offset nor any later one may be stored.
    done: bool,
}

/// Runs `handler` over the source topic until `stop` is cancelled, at least once.
///
/// On stop, no new input is taken; the inputs in hand are finished if their handler is
/// running (a retry wait is cut short instead, leaving that input unhandled and
/// uncommitted), the offsets of the inputs finished in order are committed, and the producer
/// is flushed. Returns `Err` only when the loop cannot start or cannot keep its promise (the
/// handled keys cannot be read).
pub async fn run_at_least_once<H: Handler>(
    settings: &KafkaSettings,
    config: &AtLeastOnceConfig,
    handler: H,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if config.concurrency == 0 {
        bail!("{}: concurrency must be at least 1", config.service);
    }
    let topics = settings.topics();
    let source = topics.name(config.source);
    let dlq = topics.dlq(config.source);
    let membership: Vec<(&str, &str)> = match &config.instance_id {
        Some(id) => vec![("group.instance.id", id.as_str())],
        None => Vec::new(),
    };
    let join = || -> anyhow::Result<Arc<StreamConsumer<FlatpackContext>>> {
        let consumer =
            kafka::stream_consumer(settings, config.service, &config.group_id, &membership)?;
        consumer
            .subscribe(&[&source])
            .with_context(|| format!("subscribing to {source}"))?;
        Ok(Arc::new(consumer))
    };
    let producer = kafka::producer(settings, config.service, config.delivery_timeout)?;
    let mut handled = match config.handled {
        Some(topic) => {
            let keys = HandledKeys::new(settings, config, topics.name(topic));
            match keys.catch_up(stop).await? {
                Some(keys) => Some(keys),
                None => return Ok(()),
            }
        }
        None => None,
    };
    let mut consumer = join()?;
    info!(service = config.service, topic = %source, group = %config.group_id, concurrency = config.concurrency, "consuming at least once");

    let work = Work {
        handler: Arc::new(handler),
        producer: producer.clone(),
        config: Arc::new(config.clone()),
        dlq: Arc::from(dlq.as_str()),
        stop: stop.clone(),
    };
    let mut in_hand: FuturesOrdered<BoxFuture<'static, Finished>> = FuturesOrdered::new();
    let mut keys_in_hand: HashSet<String> = HashSet::new();
    let mut assignment = Vec::new();
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut read_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.handled_read_interval,
        config.handled_read_interval,
    );
    read_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut uncommitted = false;
    // Set once an input was left unhandled: no later offset may be stored after it.
    let mut halted = false;
    let mut consumer_errors = Throttle::new(COMPLAINT_INTERVAL);
    loop {
        if kafka::consumer_must_be_replaced(consumer.client(), config.service) {
            // The inputs in hand are finished; their offsets cannot be stored any more, so a
            // new consumer, joining as the same static member, reads them again from the
            // committed offsets, and the handled keys skip what was done.
            while let Some(finished) = in_hand.next().await {
                if let (Some(key), true, Some(handled)) =
                    (finished.key, finished.done, handled.as_mut())
                {
                    handled.insert(key);
                }
            }
            keys_in_hand.clear();
            halted = false;
            uncommitted = false;
            assignment.clear();
            consumer = join()?;
            continue;
        }
        let stopping = stop.is_cancelled();
        if stopping && in_hand.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(finished) = in_hand.next(), if !in_hand.is_empty() => {
                if let Some(key) = &finished.key {
                    keys_in_hand.remove(key);
                }
                if !finished.done {
                    halted = true;
                }
                if halted {
                    continue;
                }
                if let (Some(key), Some(handled)) = (finished.key, handled.as_mut()) {
                    handled.insert(key);
                }
                match consumer.store_offset(&finished.topic, finished.partition, finished.offset) {
                    Ok(()) => uncommitted = true,
                    // The partition went to another instance meanwhile; it skips what we handled.
                    Err(err) => warn!(service = config.service, partition = finished.partition, offset = finished.offset, cause = %err, "offset not stored"),
                }
            }
            () = stop.cancelled(), if !stopping => {}
            _ = commit_tick.tick(), if uncommitted => {
                uncommitted = false;
                if let Err(err) = consumer.commit_consumer_state(CommitMode::Async) {
                    warn!(service = config.service, cause = %err, "offsets not committed");
                }
            }
            _ = read_tick.tick(), if !stopping && handled.as_ref().is_some_and(|keys| keys.wrote_since_read) => {
                if let Some(keys) = handled.take() {
                    handled = Some(keys.read_on().await?);
                }
            }
            received = consumer.recv(), if !stopping && in_hand.len() < config.concurrency => {
                let message = match received {
                    Ok(message) => message.detach(),
                    Err(err) => {
                        if let Some(held_back) = consumer_errors.admit() {
                            warn!(service = config.service, cause = %err, held_back, "consumer error");
                        }
                        continue;
                    }
                };
                // A rebalance (run inside `recv`) may have handed us partitions whose inputs
                // another instance handled: learn what it wrote before handling anything
                // from them.
                let now = assigned(&consumer);
                if now != assignment {
                    assignment = now;
                    if let Some(keys) = handled.take() {
                        match keys.catch_up(stop).await? {
                            Some(keys) => handled = Some(keys),
                            // Stopped while the broker was away: nothing taken, nothing lost.
                            None => break,
                        }
                    }
                }
                in_hand.push_back(work.take(message, handled.as_ref(), &mut keys_in_hand));
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

/// What handling one input needs, shared by all inputs in hand.
struct Work<H: Handler> {
    handler: Arc<H>,
    producer: FutureProducer<FlatpackContext>,
    config: Arc<AtLeastOnceConfig>,
    dlq: Arc<str>,
    stop: CancellationToken,
}

// Not derived: that would ask for `H: Clone`, where only the `Arc` is cloned.
impl<H: Handler> Clone for Work<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            producer: self.producer.clone(),
            config: self.config.clone(),
            dlq: self.dlq.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<H: Handler> Work<H> {
    /// The work for one message: dead-letter it, skip it (handled before, or the same key
    /// is in hand already), or handle it and write its records.
    fn take(
        &self,
        message: OwnedMessage,
        handled: Option<&HandledKeys>,
        keys_in_hand: &mut HashSet<String>,
    ) -> BoxFuture<'static, Finished> {
        let mut finished = Finished {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: None,
            done: true,
        };
        let service = self.config.service;
        let trace = traces::handling(&message);
        let span = trace.span().clone();
        let _in_span = span.enter();
        let input = match decode_or_log::<H::Input>(&message, service) {
            Ok(input) => input,
            Err(problem) => {
                let work = self.clone();
                return Box::pin(async move {
                    let dead = DeadLetter::new(&message, &work.dlq, &problem, service, &trace);
                    let record = || dead.future_record();
                    finished.done = deliver(&work.producer, &work.config, &work.stop, record).await;
                    if finished.done {
                        counter!("flatpack_dead_letters_total", "service" => service, "topic" => work.dlq.clone()).increment(1);
                    }
                    finished
                }
                .instrument(span.clone()));
            }
        };
        let key = self.handler.key(&input);
        if let Some(handled) = handled {
            if handled.contains(&key) || keys_in_hand.contains(&key) {
                debug!(service, key = %key, "handled before; skipping");
                return Box::pin(std::future::ready(finished));
            }
            keys_in_hand.insert(key.clone());
            finished.key = Some(key.clone());
        }
        let work = self.clone();
        Box::pin(
            async move {
                finished.done = work.handle_and_record(&input, &key, &trace).await;
                finished
            }
            .instrument(span.clone()),
        )
    }

    /// Handles one input and writes its records; `false` when the loop was stopped first.
    async fn handle_and_record(&self, input: &H::Input, key: &str, trace: &Traced) -> bool {
        let (producer, config, stop) = (&self.producer, &*self.config, &self.stop);
        let Some(outputs) = handle_with_retry(&*self.handler, input, key, config, stop).await
        else {
            info!(service = config.service, key = %key, "stopped before it was handled; not committed");
            return false;
        };
        let headers = trace.headers();
        for output in &outputs {
            let record = || {
                let record = FutureRecord::to(&output.topic)
                    .key(output.key.as_str())
                    .payload(output.payload.as_slice())
                    .headers(headers.clone());
                match output.partition {
                    Some(partition) => record.partition(partition),
                    None => record,
                }
            };
            if !deliver(producer, config, stop, record).await {
                warn!(service = config.service, key = %key, "stopped before its record was acknowledged; it will be handled again");
                return false;
            }
        }
        debug!(service = config.service, key = %key, "handled");
        true
    }
}

/// Runs the handler until it succeeds; `None` when stopped first.
async fn handle_with_retry<H: Handler>(
    handler: &H,
    input: &H::Input,
    key: &str,
    config: &AtLeastOnceConfig,
    stop: &CancellationToken,
) -> Option<Vec<Output>> {
    let what = format!("handling {key}");
    retry(config, stop, &what, || handler.handle(input)).await
}

/// Writes a record, retrying until the broker acknowledges it; `false` when stopped first.
async fn deliver<'a>(
    producer: &FutureProducer<FlatpackContext>,
    config: &AtLeastOnceConfig,
    stop: &CancellationToken,
    record: impl Fn() -> FutureRecord<'a, str, [u8]>,
) -> bool {
    let what = format!("writing to {}", record().topic);
    let send = || async {
        producer
            .send(record(), Timeout::After(config.delivery_timeout))
            .await
            .map_err(|(err, _)| err)
            .and_then(kafka::acknowledged)
            .map_err(anyhow::Error::from)
    };
    retry(config, stop, &what, send).await.is_some()
}

/// Runs `attempt` until it succeeds, waiting the configured backoff between tries and
/// saying each time what failed; `None` when stopped first.
async fn retry<T, F: Future<Output = anyhow::Result<T>>>(
    config: &AtLeastOnceConfig,
    stop: &CancellationToken,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => err,
        };
        if stop.is_cancelled() {
            return None;
        }
        let delay = config.retry.delay(attempts);
        counter!("flatpack_retries_total", "service" => config.service).increment(1);
        warn!(service = config.service, attempt = attempts, retry_in = ?delay, cause = %format!("{err:#}"), "{what} failed; retrying");
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The keys on a topic: which inputs were handled, by this instance or any other.
///
/// A [`Store`] of the topic's keys: in an on-disk copy with `FLATPACK_STORE_DIR` (memory
/// does not grow with the keys, and the keys stay known after the topic's retention deleted
/// their records), in memory without. Each read starts at the copy's checkpoints, where the
/// previous one (of this process or an earlier one) stopped; the keys this instance handled
/// go into the copy at once, and the checkpoints move only as far as a read got, so a read
/// never skips what another instance wrote.
#[derive(Debug)]
struct HandledKeys {
    service: &'static str,
    topic: String,
    store: Store,
    /// Whether this instance handled inputs since the last read, whose records a read would
    /// move the checkpoints past.
    wrote_since_read: bool,
}

impl HandledKeys {
    fn new(settings: &KafkaSettings, config: &AtLeastOnceConfig, topic: String) -> Self {
        let owner = format!(
            "{}-{}",
            config.group_id,
            config.instance_id.as_deref().unwrap_or("handled")
        );
        Self {
            service: config.service,
            store: Store::new(settings, topic.clone(), &owner),
            topic,
            wrote_since_read: false,
        }
    }

    /// Whether an input with `key` was handled; on a failure to read the copy, taken as not
    /// (at least once: the input is handled again).
    fn contains(&self, key: &str) -> bool {
        self.store
            .get(0, key)
            .unwrap_or_else(|err| {
                warn!(
                    service = self.service,
                    key,
                    cause = format!("{err:#}"),
                    "the handled keys could not be read; handling the input"
                );
                None
            })
            .is_some()
    }

    fn insert(&mut self, key: String) {
        self.store.remember(0, key);
        self.wrote_since_read = true;
    }

    /// Reads on from the checkpoints to the end, once: the checkpoints move past this
    /// instance's own records. A failure (the broker away) is logged and left to the next
    /// read; the copy stays as it was.
    async fn read_on(mut self) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || {
            match self.store.read_on_all() {
                Ok(()) => self.wrote_since_read = false,
                Err(err) => warn!(
                    service = self.service,
                    topic = %self.topic,
                    cause = format!("{err:#}"),
                    "the handled keys could not be read on; trying again later"
                ),
            }
            self
        })
        .await
        .context("the handled-keys reader panicked")
    }

    /// Reads every partition of the topic to its current end (committed records only),
    /// waiting for the broker as long as it takes; `None` when `stop` came first.
    async fn catch_up(mut self, stop: &CancellationToken) -> anyhow::Result<Option<Self>> {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let what = format!("reading the handled keys of {}", self.topic);
            retry_until_ok(&what, &stop, || self.store.restore_all())?;
            self.wrote_since_read = false;
            Some(self)
        })
        .await
        .context("the handled-keys reader panicked")
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
