//! Following the orders of a run through a topic: when each first appeared, and how often.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::events::AnalyticsResult;
use common::kafka::read::{self, Follower, Start};
use common::{KafkaSettings, kafka};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};

/// What a follower has seen so far.
#[derive(Debug, Default)]
pub struct Seen {
    /// Order id (the message key) → when it first appeared and how many times.
    pub orders: HashMap<String, (Instant, u32)>,
    /// The newest analytics result (highest `seq`), for the analytics topic.
    pub latest_result: Option<AnalyticsResult>,
}

impl Seen {
    /// Notes the order a message is about (its key).
    fn order(&mut self, message: &BorrowedMessage<'_>) {
        if let Some(key) = message.key() {
            let key = String::from_utf8_lossy(key).into_owned();
            self.orders
                .entry(key)
                .and_modify(|(_, count)| *count += 1)
                .or_insert((Instant::now(), 1));
        }
    }

    /// Keeps the analytics result of a message if it is the newest so far.
    fn result(&mut self, message: &BorrowedMessage<'_>) {
        if let Ok(result) =
            serde_json::from_slice::<AnalyticsResult>(message.payload().unwrap_or_default())
            && self
                .latest_result
                .as_ref()
                .is_none_or(|r| r.seq < result.seq)
        {
            self.latest_result = Some(result);
        }
    }
}

/// Starts following `topic` from its end as it is now: everything written from this call on
/// is seen, nothing before. `analytics`: the topic holds analytics results, not orders.
pub fn follow(
    settings: &KafkaSettings,
    topic: &str,
    analytics: bool,
) -> anyhow::Result<Follower<Seen>> {
    let consumer = consumer_at_end(settings, topic)?;
    Ok(Follower::start(
        consumer,
        topic,
        move |message, seen: &mut Seen| {
            if analytics {
                seen.result(message);
            } else {
                seen.order(message);
            }
        },
    ))
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
    loop {
        match read::assign_all(&consumer, topic, Start::End, timeout) {
            Ok(_) => return Ok(consumer),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!(
                    "following {topic} (does it exist? start the services first)"
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
