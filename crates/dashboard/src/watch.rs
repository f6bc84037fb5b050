//! Watching the stages from outside: every few seconds, each stage's consumer-group lag on
//! the topic it reads (from the group's committed offsets and the topic's end), and the
//! number of stuck orders, into the view and into metrics
//! (`flatpack_group_lag{stage}`, `flatpack_stuck_orders{awaiting}`).

use std::time::{Duration, Instant};

use common::kafka::read::partitions_of;
use common::kafka::{self, FlatpackContext};
use common::{KafkaSettings, Topic, events};
use metrics::gauge;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::reader::Shared;
use crate::view::GroupLag;

/// How often the lag is measured and the stuck orders counted.
const EVERY: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The stages whose lag is watched: service (its group, after the topic prefix), topic read.
const STAGES: [(&str, Topic); 3] = [
    ("transactions", Topic::OrderDetails),
    ("analytics", Topic::OrderConfirmed),
    ("email", Topic::OrderConfirmed),
];

/// Measures until `stop`. Runs on a blocking thread.
pub fn watch(settings: &KafkaSettings, shared: &Shared, stop: &CancellationToken) {
    let topics = settings.topics();
    // One client per group: a consumer reads the committed offsets of its own group. None of
    // them joins its group or commits.
    let mut groups = Vec::new();
    for (stage, topic) in STAGES {
        match kafka::consumer(settings, "dashboard-lag", &topics.scoped(stage)) {
            Ok(consumer) => groups.push((stage, topics.name(topic), consumer)),
            Err(err) => warn!(stage, cause = %format!("{err:#}"), "cannot watch this stage's lag"),
        }
    }
    let mut next = Instant::now();
    while !stop.is_cancelled() {
        if Instant::now() >= next {
            next = Instant::now() + EVERY;
            let lag: Vec<GroupLag> = groups
                .iter()
                .filter_map(|(stage, topic, consumer)| match group_lag(consumer, topic) {
                    Ok(lag) => Some(GroupLag {
                        stage,
                        topic: topic.clone(),
                        lag,
                    }),
                    Err(err) => {
                        warn!(stage, cause = %format!("{err:#}"), "cannot measure this stage's lag now");
                        None
                    }
                })
                .collect();
            for group in &lag {
                gauge!("flatpack_group_lag", "stage" => group.stage).set(group.lag as f64);
            }
            shared.update(|view| {
                view.set_lag(lag);
                let pipeline = view.totals(events::now_epoch_seconds()).pipeline;
                gauge!("flatpack_stuck_orders", "awaiting" => "decision")
                    .set(pipeline.stuck_awaiting_decision as f64);
                gauge!("flatpack_stuck_orders", "awaiting" => "email")
                    .set(pipeline.stuck_awaiting_email as f64);
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages of `topic` past the group's committed offsets, over all partitions; a partition
/// the group never committed counts from its beginning.
fn group_lag(consumer: &BaseConsumer<FlatpackContext>, topic: &str) -> anyhow::Result<i64> {
    let mut partitions = TopicPartitionList::new();
    for partition in partitions_of(consumer, topic, CALL_TIMEOUT)? {
        partitions.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(partitions, CALL_TIMEOUT)?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), CALL_TIMEOUT)?;
        let from = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        lag += (high - from).max(0);
    }
    Ok(lag)
}
