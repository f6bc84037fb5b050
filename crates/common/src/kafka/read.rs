//! Reading topics: assign every partition of a topic at an offset, read what is assigned to
//! its end, and follow a topic on a thread of its own. Every reader outside a consumer
//! group's own loop (state restores, the dashboard, the handled-keys reader, the standby,
//! the load generator) reads through these.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::{COMPLAINT_INTERVAL, Throttle, describe};

/// Where a reader starts in each partition.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// The oldest record still kept.
    Beginning,
    /// The end as it is now: everything written from here on is read, nothing before.
    End,
    /// The consumer group's committed offset, or the beginning where it has none.
    ///
    /// The committed offsets are read here, and an error returned if they cannot be:
    /// assigned at `Offset::Stored` instead, a partition whose offsets librdkafka failed to
    /// fetch (the group's coordinator still loading after a broker start) was never read
    /// from at all.
    Committed,
    /// Where an earlier read stopped: the next offset per partition, the beginning for
    /// partitions not in the map.
    After(&'a HashMap<i32, i64>),
    /// The last `n` offsets of each partition (all of it where it holds fewer): what a reader
    /// that keeps only the latest records needs.
    Latest(i64),
}

/// The partitions of `topic` as the broker lists them now; an error when it lists none (a
/// topic created a moment ago may not be listed yet).
pub fn partitions_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.id())
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions yet");
    }
    Ok(partitions)
}

/// Assigns every partition of `topic` to `consumer` at `start` (outside any group
/// rebalance); returns the partitions.
pub fn assign_all<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    start: Start<'_>,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let partitions = partitions_of(consumer, topic, timeout)?;
    assign_at(consumer, topic, &partitions, start, timeout)?;
    Ok(partitions)
}

/// Assigns `partitions` of `topic` to `consumer` at `start`.
pub fn assign_at<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    start: Start<'_>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::with_capacity(partitions.len());
    for &partition in partitions {
        let offset = match start {
            Start::Beginning | Start::Committed => Offset::Beginning,
            Start::End => {
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .with_context(|| format!("reading the end of {topic}[{partition}]"))?;
                Offset::Offset(high)
            }
            Start::Latest(n) => {
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .with_context(|| format!("reading the end of {topic}[{partition}]"))?;
                Offset::Offset(low.max(high - n.max(0)))
            }
            Start::After(next) => next
                .get(&partition)
                .map_or(Offset::Beginning, |&next| Offset::Offset(next)),
        };
        assignment.add_partition_offset(topic, partition, offset)?;
    }
    if matches!(start, Start::Committed) {
        assignment = committed_or_beginning(consumer, assignment, timeout)
            .with_context(|| format!("reading the committed offsets of {topic}"))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning the partitions of {topic}"))?;
    info!(partitions = %describe(&assignment), "partitions assigned");
    Ok(())
}

/// Polls `consumer` (one made by [`super::reader_to_end`], which reports the end of each
/// partition) until each of `partitions` reported its end, handing every message to `each`.
///
/// A broker that is away is waited for (a line now and then says so) until `timeout`; a
/// topic that does not exist or may not be read is an error at once.
pub fn read_to_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let mut open: HashSet<i32> = partitions.iter().copied().collect();
    let deadline = Instant::now() + timeout;
    let mut complaints = Throttle::new(COMPLAINT_INTERVAL);
    while !open.is_empty() {
        if Instant::now() > deadline {
            bail!("{topic} was not read to its end within {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => each(&message),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(err)) if is_lasting(&err) => {
                return Err(err).with_context(|| format!("reading {topic}"));
            }
            Some(Err(err)) => {
                if let Some(held_back) = complaints.admit() {
                    warn!(topic, cause = %err, held_back, "reading to the end: waiting for the broker");
                }
            }
        }
    }
    Ok(())
}

/// Errors that waiting does not cure.
fn is_lasting(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

/// A reader of a topic on a thread of its own, folding every message into a state `S` that
/// can be looked at meanwhile, until [`Follower::finish`].
#[derive(Debug)]
pub struct Follower<S> {
    topic: String,
    state: Watch<S>,
    stop: CancellationToken,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl<S: Default + Send + 'static> Follower<S> {
    /// Reads what is assigned to `consumer` (see [`assign_all`]) into `each`; a read error
    /// ends the reading, and [`Follower::finish`] returns it.
    pub fn start<C: ConsumerContext + 'static>(
        consumer: BaseConsumer<C>,
        topic: &str,
        mut each: impl FnMut(&BorrowedMessage<'_>, &mut S) + Send + 'static,
    ) -> Self {
        let state = Watch(Arc::new(Mutex::new(S::default())));
        let stop = CancellationToken::new();
        let thread = {
            let (state, stop, topic) = (state.0.clone(), stop.clone(), topic.to_owned());
            std::thread::spawn(move || {
                while !stop.is_cancelled() {
                    let Some(message) = consumer.poll(Duration::from_millis(20)) else {
                        continue;
                    };
                    let message = message.with_context(|| format!("reading {topic}"))?;
                    each(
                        &message,
                        &mut state.lock().unwrap_or_else(PoisonError::into_inner),
                    );
                }
                Ok(())
            })
        };
        Self {
            topic: topic.to_owned(),
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Runs `f` on the state so far.
    pub fn with<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        self.state.with(f)
    }

    /// A handle on the state so far, for what cannot borrow the follower (a `'static`
    /// closure, a task of its own).
    pub fn watch(&self) -> Watch<S> {
        self.state.clone()
    }

    /// Stops reading and returns the state, or the error that ended the reading.
    pub fn finish(mut self) -> anyhow::Result<S> {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the reader of {} panicked", self.topic))??;
        }
        Ok(std::mem::take(
            &mut *self.state.0.lock().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// A [`Follower`]'s state, looked at from elsewhere ([`Follower::watch`]); after
/// [`Follower::finish`] it holds `S::default()`.
#[derive(Debug)]
pub struct Watch<S>(Arc<Mutex<S>>);

impl<S> Clone for Watch<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> Watch<S> {
    /// Runs `f` on the state so far.
    pub fn with<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<S> Drop for Follower<S> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a [`follow`]er does with what it reads.
pub trait Reading {
    /// One message.
    fn message(&mut self, message: &BorrowedMessage<'_>);
    /// Nothing more came for now (a poll came back empty, or a partition reached its end):
    /// the moment to hand on what was gathered from the messages so far.
    fn idle(&mut self) {}
    /// Every partition reached the end it had when reading began (after [`Reading::idle`]).
    fn caught_up(&mut self);
}

/// Reads every partition of `topic` from `start` until `stop` is cancelled, into `reading`.
/// Blocking: run it on a thread of its own.
///
/// `consumer` is one made by [`super::reader_to_end`] (it reports the end of each partition)
/// and reads this topic alone: librdkafka reports an end by partition number only. A broker
/// that is away, or a topic not there yet, is waited for as long as it takes, saying so.
pub fn follow<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    start: Start<'_>,
    stop: &CancellationToken,
    reading: &mut impl Reading,
) {
    const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
    const POLL: Duration = Duration::from_millis(200);
    let what = format!("reading the partitions of {topic}");
    let Some(partitions) = super::retry_until_ok(&what, stop, || {
        assign_all(consumer, topic, start, METADATA_TIMEOUT)
    }) else {
        return;
    };
    let mut waiting_for_end: HashSet<i32> = partitions.into_iter().collect();
    let mut complaints = Throttle::new(COMPLAINT_INTERVAL);
    while !stop.is_cancelled() {
        match consumer.poll(POLL) {
            None => reading.idle(),
            Some(Ok(message)) => reading.message(&message),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                reading.idle();
                if waiting_for_end.remove(&partition) && waiting_for_end.is_empty() {
                    info!(topic, "caught up with the topic");
                    reading.caught_up();
                }
            }
            // librdkafka retries broker errors by itself; they are worth a line, not a stop.
            Some(Err(err)) => {
                if let Some(held_back) = complaints.admit() {
                    warn!(topic, cause = %err, held_back, "reading failed; retrying");
                }
            }
        }
    }
    reading.idle();
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
