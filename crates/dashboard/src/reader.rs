//! Reads the four topics into the [`View`] at every start: `analytics_result` (compacted: a
//! record per day, plus the segments not yet compacted, 16 MiB at most each) from its
//! beginning, and of the three topics of orders only the latest
//! `max_orders` records of each partition, as many as the view keeps, so that a start reads
//! no more with a million orders in the topics than with ten thousand.
//!
//! One blocking thread per topic, each with its own consumer assigned to every partition (no
//! group membership, nothing committed: the dashboard is read-only and rebuilds its view from
//! the topics). One consumer per topic because librdkafka reports
//! "end of partition" by partition number only: per topic, the first end of every partition
//! marks the initial catch-up done. Messages that do not decode are logged and counted, and
//! reading goes on (there is no dead-letter topic for a reader that writes nothing).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::kafka::read::{self, Reading, Start};
use common::kafka::{self, FlatpackContext};
use common::{KafkaSettings, Topic};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::view::{Event, View};

/// What the readers and the HTTP handlers share.
#[derive(Debug)]
pub struct Shared {
    pub view: Mutex<View>,
    /// Bumped after every change of the view; the live page waits on it.
    pub changed: watch::Sender<u64>,
    /// Topics whose initial catch-up finished.
    caught_up: AtomicUsize,
}

impl Shared {
    pub fn new(view: View) -> Self {
        Self {
            view: Mutex::new(view),
            changed: watch::Sender::new(0),
            caught_up: AtomicUsize::new(0),
        }
    }

    /// Every topic was read up to its end as it was at start.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire) == Topic::ALL.len()
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut View)) {
        // A reader that panicked while holding the lock left a view that is still usable.
        let mut view = self
            .view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut view);
        drop(view);
        self.changed.send_modify(|version| *version += 1);
    }
}

/// The consumer of one topic. The group id is unique per process and never used to
/// commit: it only satisfies librdkafka.
pub fn consumer(
    settings: &KafkaSettings,
    topic: Topic,
) -> anyhow::Result<BaseConsumer<FlatpackContext>> {
    let group = settings.topics().scoped(&format!(
        "dashboard-{}-{}-{}",
        std::process::id(),
        common::events::now_epoch_seconds() as u64,
        topic
    ));
    // It reads on after the end: 100 ms keeps its fetches few, busy or idle, while it
    // still learns quickly that it has caught up.
    kafka::follower(settings, "dashboard", &group, Duration::from_millis(100))
}

/// Where the reader of `topic` starts, for a view of the latest `max_orders` orders.
pub fn start(topic: Topic, max_orders: usize) -> Start<'static> {
    match topic {
        Topic::AnalyticsResult => Start::Beginning,
        Topic::OrderDetails | Topic::OrderConfirmed | Topic::OrderEmailSent => {
            Start::Latest(i64::try_from(max_orders).unwrap_or(i64::MAX))
        }
    }
}

/// Reads `topic` into `shared` from `start` until `stop` is cancelled. Runs on a blocking
/// thread.
pub fn read_topic(
    consumer: &BaseConsumer<FlatpackContext>,
    topic: Topic,
    name: &str,
    start: Start<'_>,
    shared: &Shared,
    stop: &CancellationToken,
) {
    read::follow(
        consumer,
        name,
        start,
        stop,
        &mut TopicReader { topic, shared },
    );
}

struct TopicReader<'a> {
    topic: Topic,
    shared: &'a Shared,
}

impl Reading for TopicReader<'_> {
    fn message(&mut self, message: &BorrowedMessage<'_>) {
        handle(message, self.topic, self.shared);
    }

    fn caught_up(&mut self) {
        self.shared.caught_up.fetch_add(1, Ordering::AcqRel);
        self.shared.changed.send_modify(|version| *version += 1);
    }
}

fn handle(message: &BorrowedMessage<'_>, topic: Topic, shared: &Shared) {
    // A tombstone (compaction's delete marker) carries nothing to show.
    let Some(payload) = message.payload() else {
        return;
    };
    match Event::decode(topic, payload) {
        Ok(event) => {
            let record_time = message.timestamp().to_millis().map(|ms| ms as f64 / 1000.0);
            shared.update(|view| view.apply(&event, record_time));
        }
        Err(err) => {
            warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                cause = %err,
                "skipping a message that does not decode"
            );
            shared.update(View::skipped);
        }
    }
}
