//! Standing by while another instance counts, and deciding when to take over.
//!
//! The active instance commits its consumer offsets with every transaction. A standby watches
//! those offsets and the end of `order_confirmed`: when decisions wait (new ones arrived, or
//! more than a commit marker per partition is unread) and the offsets have not moved for the
//! takeover time, the active instance is taken to be gone and the standby takes over.

use std::time::{Duration, Instant};

use anyhow::Context;
use common::KafkaSettings;
use common::kafka::exactly_once::ExactlyOnceConfig;
use common::kafka::read;
use common::kafka::{self, FlatpackContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::warn;

const CHECK_EVERY: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns `Ok(true)` when this instance should take over, `Ok(false)` when `stop` came first.
pub fn wait_for_takeover(
    settings: &KafkaSettings,
    config: &ExactlyOnceConfig,
    takeover_after: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    let topic = settings.topics().name(config.source);
    let consumer = kafka::consumer(settings, "analytics-standby", &config.group_id)?;
    let mut progress: Option<Progress> = None;
    while !stop.is_cancelled() {
        // A broker that is slow to answer is no reason to give up standing by.
        match offsets(&consumer, &topic) {
            Ok((partitions, committed, end)) => {
                let progress =
                    progress.get_or_insert_with(|| Progress::new(takeover_after, partitions));
                if progress.observe(Instant::now(), committed, end) {
                    return Ok(true);
                }
            }
            Err(err) => warn!(cause = %err, "cannot read the active instance's progress; retrying"),
        }
        std::thread::sleep(CHECK_EVERY);
    }
    Ok(false)
}

/// (partitions, sum of committed offsets, sum of end offsets) of `topic` for the group.
fn offsets(
    consumer: &BaseConsumer<FlatpackContext>,
    topic: &str,
) -> anyhow::Result<(i64, i64, i64)> {
    let mut partitions = TopicPartitionList::new();
    for partition in read::partitions_of(consumer, topic, CALL_TIMEOUT)? {
        partitions.add_partition(topic, partition);
    }
    let committed: i64 = consumer
        .committed_offsets(partitions.clone(), CALL_TIMEOUT)
        .context("reading the committed offsets")?
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    let mut end = 0;
    for element in partitions.elements() {
        end += consumer
            .fetch_watermarks(topic, element.partition(), CALL_TIMEOUT)
            .context("reading the end offsets")?
            .1;
    }
    let count = i64::try_from(partitions.count()).unwrap_or(i64::MAX);
    Ok((count, committed, end))
}

/// The takeover rule, apart from Kafka so that it can be tested on its own.
#[derive(Debug)]
struct Progress {
    takeover_after: Duration,
    partitions: i64,
    committed: Option<i64>,
    since: Instant,
    end_at_last_commit: i64,
}

impl Progress {
    fn new(takeover_after: Duration, partitions: i64) -> Self {
        Self {
            takeover_after,
            partitions,
            committed: None,
            since: Instant::now(),
            end_at_last_commit: 0,
        }
    }

    /// Takes in the sums of committed offsets and end offsets over all partitions; true when
    /// the active instance looks gone.
    fn observe(&mut self, now: Instant, committed: i64, end: i64) -> bool {
        if self.committed != Some(committed) {
            self.committed = Some(committed);
            self.since = now;
            self.end_at_last_commit = end;
            return false;
        }
        // At rest each partition ends with at most one unread transaction marker.
        let waiting = end > self.end_at_last_commit || end - committed > self.partitions;
        waiting && now.duration_since(self.since) >= self.takeover_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_idle_topic_never_triggers_a_takeover() {
        let start = Instant::now();
        let mut progress = Progress::new(5 * SECOND, 3);
        assert!(!progress.observe(start, 100, 103));
        assert!(!progress.observe(start + 60 * SECOND, 100, 103));
    }

    #[test]
    fn new_decisions_without_commits_trigger_a_takeover_after_the_wait() {
        let start = Instant::now();
        let mut progress = Progress::new(5 * SECOND, 3);
        assert!(!progress.observe(start, 100, 103));
        assert!(!progress.observe(start + 2 * SECOND, 100, 110));
        assert!(progress.observe(start + 5 * SECOND, 100, 110));
    }

    #[test]
    fn commits_keep_the_active_instance_in_charge() {
        let start = Instant::now();
        let mut progress = Progress::new(5 * SECOND, 3);
        assert!(!progress.observe(start, 100, 103));
        assert!(!progress.observe(start + 4 * SECOND, 108, 110));
        assert!(!progress.observe(start + 8 * SECOND, 108, 110));
        assert!(!progress.observe(start + 8 * SECOND, 112, 130));
    }

    #[test]
    fn a_backlog_left_behind_triggers_a_takeover_without_new_decisions() {
        let start = Instant::now();
        let mut progress = Progress::new(5 * SECOND, 3);
        assert!(!progress.observe(start, 100, 150));
        assert!(progress.observe(start + 5 * SECOND, 100, 150));
    }
}
