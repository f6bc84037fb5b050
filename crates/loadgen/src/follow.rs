//! Following the orders of a run through a topic: when each first appeared, and how often.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::events::AnalyticsResult;
use common::{KafkaSettings, kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// What a follower has seen so far.
#[derive(Debug, Default)]
pub struct Seen {
    /// Order id (the message key) → when it first appeared and how many times.
    pub orders: HashMap<String, (Instant, u32)>,
    /// The newest analytics result (highest `seq`), for the analytics topic.
    pub latest_result: Option<AnalyticsResult>,
}

/// A reader of one topic from its current end, on a thread of its own.
#[derive(Debug)]
pub struct Follower {
    pub topic: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Follower {
    /// Starts reading `topic` at its end as it is now: everything written from this call on
    /// is seen, nothing before.
    pub fn start(settings: &KafkaSettings, topic: &str, analytics: bool) -> anyhow::Result<Self> {
        let consumer = consumer_at_end(settings, topic)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || read(&consumer, &seen, &stop, analytics))
        };
        Ok(Self {
            topic: topic.to_owned(),
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` on what has been seen so far.
    pub fn with<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops reading and returns everything seen.
    pub fn finish(mut self) -> anyhow::Result<Seen> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("follower of {} panicked", self.topic))??;
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(seen)
    }
}

/// A `read_committed` consumer assigned every partition of `topic` at its end as it is now:
/// it sees everything written from this call on, nothing before.
pub fn consumer_at_end(
    settings: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<BaseConsumer<kafka::FlatpackContext>> {
    let consumer = kafka::consumer(
        settings,
        "loadgen",
        &format!("loadgen-{:08x}", rand::random::<u32>()),
    )?;
    let timeout = Duration::from_secs(10);
    // A topic created a moment ago may not be in the metadata yet, nor have a leader to say
    // where it ends: ask again for a while.
    let deadline = Instant::now() + timeout;
    let assignment = loop {
        match end_offsets(&consumer, topic, timeout) {
            Ok(assignment) if assignment.count() > 0 => break assignment,
            Ok(_) if Instant::now() >= deadline => {
                anyhow::bail!("topic {topic} does not exist (start the services first)")
            }
            Err(err) if Instant::now() >= deadline => return Err(err),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Every partition of `topic` at its end as it is now.
fn end_offsets(
    consumer: &BaseConsumer<kafka::FlatpackContext>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<TopicPartitionList> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .with_context(|| format!("reading the end of {topic}"))?;
        assignment.add_partition_offset(topic, partition.id(), Offset::Offset(high))?;
    }
    Ok(assignment)
}

fn read(
    consumer: &BaseConsumer<kafka::FlatpackContext>,
    seen: &Mutex<Seen>,
    stop: &std::sync::atomic::AtomicBool,
    analytics: bool,
) -> anyhow::Result<()> {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let message = message.context("following a topic")?;
        let arrived = Instant::now();
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if analytics {
            if let Ok(result) =
                serde_json::from_slice::<AnalyticsResult>(message.payload().unwrap_or_default())
                && seen
                    .latest_result
                    .as_ref()
                    .is_none_or(|r| r.seq < result.seq)
            {
                seen.latest_result = Some(result);
            }
        } else if let Some(key) = message.key() {
            let key = String::from_utf8_lossy(key).into_owned();
            seen.orders
                .entry(key)
                .and_modify(|(_, count)| *count += 1)
                .or_insert((arrived, 1));
        }
    }
    Ok(())
}
