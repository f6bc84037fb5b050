//! The exactly-once consume-transform-produce loop, written once for every service that
//! turns messages of one topic into messages of others.
//!
//! A service supplies a [`Transform`]: how one decoded input becomes output records. The loop
//! does the rest: poll a batch, decode each message (a message that does not decode goes to
//! the source's dead-letter topic with the error and its origin in headers), write the outputs
//! and the consumer offsets in one Kafka transaction, commit, and stop cleanly when asked.
//!
//! A crash at any instant leaves either the whole batch (outputs and offsets) committed or
//! none of it; the restarted instance, with the same transactional id, aborts the open
//! transaction and reads the batch again. Readers with `isolation.level=read_committed` thus
//! see each output exactly once.
//!
//! A broker that goes away (restarts, loses leadership, is killed) stops nothing: a failed
//! transaction is aborted and its batch read again; a producer that cannot go on (its abort
//! failed, or the coordinator aborted a transaction that outlived its timeout while the broker
//! was away) is replaced by a new one with the same transactional id, whose initialisation
//! settles the old one's last transaction either way, after which the service's state is
//! restored again. Each wait says (at most every few seconds) what it waits for. The loop
//! ends with an error only when another instance took over its transactional id.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{counter, histogram};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dead_letter::{decode_or_dead_letter, reject};
use super::read::{self, Start};
use super::{COMPLAINT_INTERVAL, FlatpackContext, Throttle, Written, retry_until_ok};
use crate::kafka;
use crate::settings::KafkaSettings;
use crate::topics::Topic;
use crate::traces;

/// How long a blocking transactional call may take before it counts as failed.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A record to write: where, under which key, what.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// The partition, where it must be a given one (a changelog's, matching the source's);
    /// `None`: the key decides.
    pub partition: Option<i32>,
}

impl Output {
    /// A record whose partition its key decides.
    pub fn new(topic: impl Into<String>, key: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload,
            partition: None,
        }
    }
}

/// Where an input came from, as it came.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// What a service does with each message of its source topic.
pub trait Transform: Send + 'static {
    /// The message type of the source topic.
    type Input: DeserializeOwned;

    /// Turns one input into the records to write (none, one or several), or refuses it.
    fn apply(
        &mut self,
        input: Self::Input,
        from: Source<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused>;

    /// Called once the producer owns its transactional id (any former owner is fenced and
    /// its open transaction aborted), before the first message: load state kept outside.
    fn restore(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// These partitions of the source are this instance's now: load their state. Called
    /// before any of their messages is applied; after a rebalance, or a replaced producer,
    /// for every partition assigned then.
    fn assigned(&mut self, _partitions: &[i32]) -> anyhow::Result<()> {
        Ok(())
    }

    /// These partitions are no longer this instance's: forget their state.
    fn revoked(&mut self, _partitions: &[i32]) {}

    /// The transaction holding everything applied since the last commit or abort committed,
    /// with the records in `written`.
    fn committed(&mut self, _written: &Written) {}

    /// The transaction was aborted: everything applied since the last commit will be applied
    /// again; forget any state derived from it.
    fn aborted(&mut self) {}
}

/// Why an input gave no records of its own.
#[derive(Debug)]
pub enum Refused {
    /// The input goes to the source's dead-letter topic with this reason.
    DeadLetter(String),
    /// The state the input is checked against could not be read: the transaction is aborted
    /// and the batch read again.
    State(anyhow::Error),
}

impl From<String> for Refused {
    fn from(why: String) -> Self {
        Refused::DeadLetter(why)
    }
}

impl From<anyhow::Error> for Refused {
    fn from(err: anyhow::Error) -> Self {
        Refused::State(err)
    }
}

/// How the instances of a service share the source topic's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The consumer group splits the partitions among the running instances, each with its
    /// own transactional id (stateless services: transactions).
    Group,
    /// One instance reads every partition; all instances share one transactional id, so the
    /// latest to start fences the others, whose loop ends with [`Fenced`] (services whose
    /// state spans all partitions: analytics).
    Exclusive,
}

/// The loop ended because another instance took over the transactional id.
#[derive(Debug, thiserror::Error)]
#[error("fenced: another instance took over transactional id {0}")]
pub struct Fenced(pub String);

/// How one exactly-once loop runs.
#[derive(Debug, Clone)]
pub struct ExactlyOnceConfig {
    /// The service, for logs, client ids and DLQ headers.
    pub service: &'static str,
    /// The topic read.
    pub source: Topic,
    /// The consumer group (shared by all instances of the service).
    pub group_id: String,
    /// Stable per instance across restarts (see [`kafka::transactional_producer`]).
    pub transactional_id: String,
    pub membership: Membership,
    /// Most messages per transaction.
    pub max_batch: usize,
    /// How long to wait for a batch to fill once its first message arrived.
    pub max_batch_wait: Duration,
    /// After this long the broker aborts an open transaction of a vanished instance.
    pub transaction_timeout: Duration,
}

/// Runs `transform` over the source topic until `stop` is cancelled, exactly once.
///
/// Blocking: call it from a dedicated thread (`tokio::task::spawn_blocking`). Returns `Ok`
/// after a clean stop (no transaction open, producer flushed, consumer group left), also
/// when asked to stop while it waited for the broker, and [`Fenced`] when another instance
/// took over its transactional id.
pub fn run_exactly_once<T: Transform>(
    settings: &KafkaSettings,
    config: &ExactlyOnceConfig,
    mut transform: T,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let topics = settings.topics();
    let source = topics.name(config.source);
    let dlq = topics.dlq(config.source);
    let Some(mut producer) = start_producer(settings, config, &mut transform, stop)? else {
        return Ok(());
    };
    let Some(mut consumer) = start_consumer(settings, config, &source, stop)? else {
        return Ok(());
    };
    info!(service = config.service, topic = %source, group = %config.group_id, "consuming exactly once");

    let mut batch = Vec::with_capacity(config.max_batch);
    let mut consumer_errors = Throttle::new(COMPLAINT_INTERVAL);
    let mut owned = Owned::default();
    while !stop.is_cancelled() {
        if kafka::consumer_must_be_replaced(consumer.client(), config.service) {
            // A new consumer joins as the same static member and goes on from the committed
            // offsets; the state of the partitions it gets is loaded again.
            owned.forget(&mut transform);
            drop(consumer);
            consumer = match start_consumer(settings, config, &source, stop)? {
                Some(new) => new,
                None => return Ok(()),
            };
            continue;
        }
        let generation = consumer.context().rebalances();
        collect_batch(&consumer, config, stop, &mut batch, &mut consumer_errors);
        if batch.is_empty() {
            continue;
        }
        if consumer.context().rebalances() != generation {
            // The partitions were handed out again while the batch filled: what came before
            // may come again from the committed offsets. Start the batch over from there.
            batch.clear();
            if !rewind(&consumer, stop) {
                break;
            }
            continue;
        }
        if owned
            .sync(&consumer, &source, &mut transform, stop)
            .is_none()
        {
            break;
        }
        let started = Instant::now();
        let result = process_batch(
            &consumer,
            &producer,
            config,
            &dlq,
            &mut transform,
            &batch,
            &owned.partitions,
        );
        let err = match result {
            Ok(dead_letters) => {
                transform.committed(&producer.context().take_written());
                let elapsed = started.elapsed();
                debug!(
                    service = config.service,
                    messages = batch.len(),
                    ?elapsed,
                    "transaction committed"
                );
                let service = config.service;
                counter!("flatpack_transactions_total", "service" => service, "outcome" => "committed").increment(1);
                histogram!("flatpack_transaction_seconds", "service" => service).record(elapsed);
                histogram!("flatpack_transaction_messages", "service" => service)
                    .record(batch.len() as f64);
                if dead_letters > 0 {
                    counter!("flatpack_dead_letters_total", "service" => service, "topic" => dlq.clone()).increment(dead_letters);
                }
                continue;
            }
            Err(err) => err,
        };
        transform.aborted();
        counter!("flatpack_transactions_total", "service" => config.service, "outcome" => "aborted").increment(1);
        let replace = match Failure::of(err, &producer, started.elapsed(), config) {
            Failure::Fenced(err) => {
                warn!(service = config.service, cause = %err, "another instance took over; stopping this loop");
                return Err(Fenced(config.transactional_id.clone()).into());
            }
            Failure::Abortable(err) => {
                warn!(service = config.service, cause = %err, messages = batch.len(), "transaction failed; aborting and reading the batch again");
                match abort(&producer) {
                    Ok(()) => false,
                    Err(abort_err) => {
                        warn!(service = config.service, cause = %abort_err, "abort failed; replacing the producer");
                        true
                    }
                }
            }
            Failure::Unusable(err) => {
                warn!(service = config.service, cause = %err, messages = batch.len(), "the producer cannot go on; replacing it and reading the batch again");
                true
            }
        };
        if replace {
            owned.forget(&mut transform);
            drop(producer);
            producer = match start_producer(settings, config, &mut transform, stop)? {
                Some(new) => new,
                None => return Ok(()),
            };
        }
        if !rewind(&consumer, stop) {
            break;
        }
    }
    info!(service = config.service, "stopping: no transaction open");
    if let Err(err) = producer.flush(TXN_CALL_TIMEOUT) {
        warn!(service = config.service, cause = %err, "flushing the producer on shutdown failed");
    }
    consumer.unsubscribe();
    Ok(())
}

/// Seeks back to the committed offsets, waiting for the broker as long as it takes; `false`
/// when `stop` came first. A consumer in a fatal state is left as it is: the loop replaces
/// it, and its successor starts from the committed offsets.
fn rewind(consumer: &BaseConsumer<FlatpackContext>, stop: &CancellationToken) -> bool {
    retry_until_ok("rewinding to the committed offsets", stop, || {
        if consumer.client().fatal_error().is_some() {
            return Ok(());
        }
        read::rewind_to_committed(consumer, TXN_CALL_TIMEOUT).map_err(Into::into)
    })
    .is_some()
}

/// A consumer of the source that joined its group (or, for [`Membership::Exclusive`], was
/// assigned every partition from the committed offsets), waiting for the broker as long as
/// it takes. `None` when `stop` came first.
fn start_consumer(
    settings: &KafkaSettings,
    config: &ExactlyOnceConfig,
    source: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Option<BaseConsumer<FlatpackContext>>> {
    let consumer = match config.membership {
        // Static membership under the instance's stable id: a restarted instance takes its
        // partitions back at once instead of waiting for the group to expire its former self.
        Membership::Group => kafka::consumer_with(
            settings,
            config.service,
            &config.group_id,
            &[("group.instance.id", &config.transactional_id)],
        )?,
        Membership::Exclusive => kafka::consumer(settings, config.service, &config.group_id)?,
    };
    match config.membership {
        Membership::Group => consumer
            .subscribe(&[source])
            .with_context(|| format!("subscribing to {source}"))?,
        Membership::Exclusive => {
            let what = format!("reading the partitions of {source}");
            let assigned = retry_until_ok(&what, stop, || {
                read::assign_all(&consumer, source, Start::Committed, TXN_CALL_TIMEOUT)
            });
            if assigned.is_none() {
                return Ok(None);
            }
        }
    }
    Ok(Some(consumer))
}

/// The source partitions whose state the transform holds, kept equal to the consumer's
/// assignment.
#[derive(Debug, Default)]
struct Owned {
    partitions: Vec<i32>,
    /// The consumer's rebalance count when `partitions` was last loaded.
    generation: Option<u64>,
}

impl Owned {
    /// Loads the state of the partitions assigned now, after a rebalance or a replaced
    /// producer (every assigned partition then: another instance may have owned any of
    /// them meanwhile). `None` when `stop` came first.
    fn sync<T: Transform>(
        &mut self,
        consumer: &BaseConsumer<FlatpackContext>,
        source: &str,
        transform: &mut T,
        stop: &CancellationToken,
    ) -> Option<()> {
        let generation = consumer.context().rebalances();
        if self.generation == Some(generation) {
            return Some(());
        }
        let mut now: Vec<i32> = consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(source)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        now.sort_unstable();
        self.forget(transform);
        if !now.is_empty() {
            retry_until_ok("loading the state of the assigned partitions", stop, || {
                transform.assigned(&now)
            })?;
        }
        self.partitions = now;
        self.generation = Some(generation);
        Some(())
    }

    /// Drops every partition's state: the next [`Owned::sync`] loads it again.
    fn forget<T: Transform>(&mut self, transform: &mut T) {
        if !self.partitions.is_empty() {
            transform.revoked(&self.partitions);
        }
        self.partitions.clear();
        self.generation = None;
    }
}

/// What a failed transaction leaves behind, and so what the loop does next.
#[derive(Debug)]
enum Failure {
    /// Another instance owns the transactional id now.
    Fenced(KafkaError),
    /// The transaction can be aborted and the batch read again.
    Abortable(KafkaError),
    /// The producer is in a fatal state: only a new one can go on.
    Unusable(KafkaError),
}

impl Failure {
    /// A fencing error is taken for another instance only when the transaction was younger
    /// than the transaction timeout: the coordinator itself fences a producer whose
    /// transaction outlived it (bumping the epoch as it aborts), which happens when the
    /// broker was away for longer, and then a new producer may go on.
    fn of(
        err: KafkaError,
        producer: &BaseProducer<FlatpackContext>,
        age: Duration,
        config: &ExactlyOnceConfig,
    ) -> Self {
        // A fatal error may come as the generic "fatal" code; the producer keeps the cause.
        let fenced = is_fenced(error_code(&err))
            || producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| is_fenced(Some(code)));
        if fenced {
            if age < config.transaction_timeout {
                Failure::Fenced(err)
            } else {
                Failure::Unusable(err)
            }
        } else if is_fatal(&err) {
            Failure::Unusable(err)
        } else {
            Failure::Abortable(err)
        }
    }
}

/// A transactional producer that owns its transactional id (any former owner fenced, its
/// open transaction settled), with the transform's state restored: waits for the broker as
/// long as it takes. `None` when `stop` came first.
fn start_producer<T: Transform>(
    settings: &KafkaSettings,
    config: &ExactlyOnceConfig,
    transform: &mut T,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Arc<BaseProducer<FlatpackContext>>>> {
    let producer = Arc::new(kafka::transactional_producer(
        settings,
        config.service,
        &config.transactional_id,
        config.transaction_timeout,
    )?);
    let what = format!("initialising transactions as {}", config.transactional_id);
    let initialised = retry_until_ok(&what, stop, || {
        producer
            .init_transactions(TXN_CALL_TIMEOUT)
            .map_err(Into::into)
    });
    if initialised.is_none() {
        return Ok(None);
    }
    if retry_until_ok("restoring state", stop, || transform.restore()).is_none() {
        return Ok(None);
    }
    Ok(Some(producer))
}

/// Polls until `max_batch` messages are in, or `max_batch_wait` passed since the first.
fn collect_batch(
    consumer: &BaseConsumer<FlatpackContext>,
    config: &ExactlyOnceConfig,
    stop: &CancellationToken,
    batch: &mut Vec<OwnedMessage>,
    errors: &mut Throttle,
) {
    const IDLE_POLL: Duration = Duration::from_millis(100);
    batch.clear();
    let mut deadline: Option<Instant> = None;
    while batch.len() < config.max_batch {
        let timeout = match deadline {
            None if stop.is_cancelled() => return,
            None => IDLE_POLL,
            // Whole milliseconds: librdkafka takes the timeout in ms, and a poll for less than
            // one returns at once, which would spin through the batch's last millisecond.
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) => Duration::from_millis(left.as_millis() as u64 + 1),
                None => return,
            },
        };
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                batch.push(message.detach());
                deadline.get_or_insert_with(|| Instant::now() + config.max_batch_wait);
            }
            Some(Err(err)) => {
                if let Some(held_back) = errors.admit() {
                    warn!(service = config.service, cause = %err, held_back, "consumer error");
                }
                if deadline.is_some() {
                    return;
                }
            }
            None if deadline.is_none() => return,
            None => {}
        }
    }
}

fn process_batch<T: Transform>(
    consumer: &BaseConsumer<FlatpackContext>,
    producer: &Arc<BaseProducer<FlatpackContext>>,
    config: &ExactlyOnceConfig,
    dlq: &str,
    transform: &mut T,
    batch: &[OwnedMessage],
    owned: &[i32],
) -> Result<u64, KafkaError> {
    // Counted per transaction: what an earlier, aborted one left does not concern this one.
    producer.context().take_unacknowledged();
    producer.context().take_written();
    producer.begin_transaction()?;
    let mut dead_letters = 0;
    let mut out = Vec::new();
    let mut next_offsets: HashMap<(&str, i32), i64> = HashMap::new();
    for message in batch {
        // Fetched before a rebalance took its partition away: the new owner reads it.
        if !owned.contains(&message.partition()) {
            continue;
        }
        out.clear();
        let trace = traces::handling(message);
        let _handling = trace.span().enter();
        let from = Source {
            partition: message.partition(),
            key: message.key(),
            payload: message.payload().unwrap_or_default(),
        };
        let rejected = match decode_or_dead_letter::<T::Input>(message, dlq, config.service, &trace)
        {
            Ok(input) => match transform.apply(input, from, &mut out) {
                Ok(()) => None,
                Err(Refused::DeadLetter(why)) => {
                    Some(reject(message, dlq, config.service, &why, &trace))
                }
                Err(Refused::State(err)) => {
                    warn!(
                        service = config.service,
                        cause = format!("{err:#}"),
                        "the state could not be read"
                    );
                    return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
                }
            },
            Err(dead) => Some(dead),
        };
        if let Some(dead) = rejected {
            send(producer, dead.base_record())?;
            dead_letters += 1;
        }
        let headers = trace.headers();
        for output in out.iter() {
            let record = BaseRecord::to(&output.topic)
                .key(output.key.as_str())
                .payload(output.payload.as_slice())
                .headers(headers.clone());
            let record = match output.partition {
                Some(partition) => record.partition(partition),
                None => record,
            };
            send(producer, record)?;
        }
        next_offsets.insert((message.topic(), message.partition()), message.offset() + 1);
    }
    let mut offsets = TopicPartitionList::with_capacity(next_offsets.len());
    for ((topic, partition), offset) in next_offsets {
        offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    // Absent only while the consumer has not joined its group yet: abort and try again.
    let group = consumer
        .group_metadata()
        .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
    send_offsets(producer, offsets, group)?;
    commit(producer)?;
    Ok(dead_letters)
}

/// How much longer than its own timeout a transactional call may take before the loop
/// stops waiting for it.
const TXN_CALL_GRACE: Duration = Duration::from_secs(5);

/// `send_offsets_to_transaction`, on a thread of its own so that the loop stops waiting
/// once the call overran its timeout.
///
/// librdkafka 2.12 can block in this call far past its timeout when the group coordinator
/// went away and came back (confluentinc/librdkafka#5456, #5511: seen here for five minutes
/// during a rolling restart, until its next metadata refresh). The overrunning call keeps
/// the producer alive on its thread and finishes on its own; the loop gets a timeout, and
/// its abort then fails (a call is in progress), so it carries on with a new producer,
/// which fences the stuck one.
fn send_offsets(
    producer: &Arc<BaseProducer<FlatpackContext>>,
    offsets: TopicPartitionList,
    group: ConsumerGroupMetadata,
) -> Result<(), KafkaError> {
    let (done, result) = mpsc::channel();
    let producer = Arc::clone(producer);
    std::thread::Builder::new()
        .name("send-offsets".into())
        .spawn(move || {
            let _ =
                done.send(producer.send_offsets_to_transaction(&offsets, &group, TXN_CALL_TIMEOUT));
        })
        .map_err(|_| KafkaError::Flush(RDKafkaErrorCode::Fail))?;
    match result.recv_timeout(TXN_CALL_TIMEOUT + TXN_CALL_GRACE) {
        Ok(outcome) => outcome,
        Err(_) => {
            warn!(timeout = ?TXN_CALL_TIMEOUT, "sending the offsets overran its timeout; leaving the call to finish on its own");
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
        }
    }
}

/// Commits, retrying while librdkafka says the commit itself may be retried (also for the
/// benchmark's raw copy loop, which is to commit as this loop does).
///
/// A record reported delivered without an offset (see [`kafka::acknowledged`]) may be missing
/// from the transaction: the commit fails instead, so the batch is aborted and read again.
pub fn commit(producer: &BaseProducer<FlatpackContext>) -> Result<(), KafkaError> {
    await_deliveries(producer, TXN_CALL_TIMEOUT)?;
    let unacknowledged = producer.context().take_unacknowledged();
    if unacknowledged > 0 {
        warn!(
            records = unacknowledged,
            "records of this transaction were reported delivered without an offset; aborting it"
        );
        return Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
        ));
    }
    let mut attempts = 0;
    loop {
        match producer.commit_transaction(TXN_CALL_TIMEOUT) {
            Err(KafkaError::Transaction(err)) if err.is_retriable() && attempts < 3 => {
                attempts += 1;
                warn!(cause = %err, attempts, "commit timed out; retrying");
            }
            other => return other,
        }
    }
}

/// Serves delivery reports until the broker acknowledged every record sent, so that the
/// commit's own flush finds nothing outstanding.
///
/// rdkafka's `BaseProducer::flush` (which `commit_transaction` calls) polls for delivery
/// reports in slices of 100 ms and each slice runs to its end, so a commit with records still
/// in flight took at least 100 ms however fast the broker answered. A poll with a timeout also
/// spins through its last millisecond. Here each poll takes what is queued without waiting,
/// and the wait between polls sleeps, so the commit goes out within a fraction of a
/// millisecond of the last acknowledgement without burning a core meanwhile.
fn await_deliveries(
    producer: &BaseProducer<FlatpackContext>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    const PAUSE: Duration = Duration::from_micros(200);
    let deadline = Instant::now() + timeout;
    loop {
        // One delivery report per poll; a transaction has about one per partition written.
        for _ in 0..16 {
            if producer.in_flight_count() == 0 {
                return Ok(());
            }
            producer.poll(Duration::ZERO);
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(PAUSE);
    }
}

/// Queues a record, waiting for room when the producer's queue is full.
pub fn send<K: ToBytes + ?Sized>(
    producer: &BaseProducer<FlatpackContext>,
    mut record: BaseRecord<'_, K, [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// Aborts the open transaction.
///
/// librdkafka's abort drops the records still queued and then waits until the delivery
/// report of every record in flight was served, which rdkafka's producer does only when
/// polled; as librdkafka asks, a second thread polls while the abort runs (records in
/// flight to a broker that is away fail within the transaction timeout).
fn abort(producer: &BaseProducer<FlatpackContext>) -> Result<(), KafkaError> {
    let aborting = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while aborting.load(Ordering::Acquire) {
                producer.poll(Duration::from_millis(10));
            }
        });
        let mut attempts = 0;
        let result = loop {
            match producer.abort_transaction(TXN_CALL_TIMEOUT) {
                Err(KafkaError::Transaction(err)) if err.is_retriable() && attempts < 3 => {
                    attempts += 1;
                    warn!(cause = %err, attempts, "abort not finished; retrying");
                }
                other => break other,
            }
        };
        aborting.store(false, Ordering::Release);
        result
    })
}

fn error_code(err: &KafkaError) -> Option<RDKafkaErrorCode> {
    match err {
        KafkaError::Transaction(e) => Some(e.code()),
        other => other.rdkafka_error_code(),
    }
}

/// The error code says another producer took over the transactional id (or its epoch).
fn is_fenced(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

fn is_fatal(err: &KafkaError) -> bool {
    match err {
        KafkaError::Transaction(err) => err.is_fatal(),
        other => matches!(other.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)),
    }
}
