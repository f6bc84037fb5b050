//! Which orders were decided: for each partition of `order_details`, every decided
//! `order_id` with the fingerprint of what the customer asked for.
//!
//! The state lives in a compacted changelog topic with the partitions of `order_details`,
//! one record per decided order in the partition of its order, written in the same Kafka
//! transaction as the decision and the consumer offsets (the way Kafka Streams keeps a state
//! store). So the state and the decisions are committed, or aborted, together: an instance
//! assigned a partition reads that partition of the changelog and knows exactly the orders
//! decided before its committed offset, whoever decided them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::events::DecisionStatus;
use common::kafka::dead_letter::decode;
use common::kafka::exactly_once::Output;
use common::kafka::read::{self, Start};
use common::{KafkaSettings, kafka};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How long loading the changelog of the assigned partitions may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// One changelog record's value (its key is the `order_id`).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// [`common::Order::fingerprint`] of the order decided.
    fingerprint: String,
    status: DecisionStatus,
}

/// What the state says of an order that comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Its `order_id` was never decided.
    New,
    /// Decided before, with the same content: a copy.
    Same,
    /// Its `order_id` was decided for a different order.
    Different,
}

/// The decided orders of the partitions this instance holds.
#[derive(Debug)]
pub struct Decided {
    kafka: KafkaSettings,
    changelog: String,
    /// `order_id` → fingerprint, per partition.
    partitions: HashMap<i32, HashMap<String, String>>,
    /// Entries added since the last commit, undone if the transaction aborts.
    pending: Vec<(i32, String)>,
}

impl Decided {
    pub fn new(kafka: KafkaSettings, changelog: String) -> Self {
        Self {
            kafka,
            changelog,
            partitions: HashMap::new(),
            pending: Vec::new(),
        }
    }

    pub fn check(&self, partition: i32, order_id: &str, fingerprint: &str) -> Seen {
        match self
            .partitions
            .get(&partition)
            .and_then(|p| p.get(order_id))
        {
            None => Seen::New,
            Some(known) if known == fingerprint => Seen::Same,
            Some(_) => Seen::Different,
        }
    }

    /// Notes the decision and returns its changelog record, for the same transaction.
    pub fn record(
        &mut self,
        partition: i32,
        order_id: String,
        fingerprint: String,
        status: DecisionStatus,
    ) -> Output {
        let entry = Entry {
            fingerprint: fingerprint.clone(),
            status,
        };
        // Two plain strings and an enum: serialising cannot fail.
        let payload = serde_json::to_vec(&entry).unwrap_or_default();
        let mut output = Output::new(&self.changelog, order_id.clone(), payload);
        output.partition = Some(partition);
        self.partitions
            .entry(partition)
            .or_default()
            .insert(order_id.clone(), fingerprint);
        self.pending.push((partition, order_id));
        output
    }

    pub fn committed(&mut self) {
        self.pending.clear();
    }

    pub fn aborted(&mut self) {
        for (partition, order_id) in self.pending.drain(..) {
            if let Some(orders) = self.partitions.get_mut(&partition) {
                orders.remove(&order_id);
            }
        }
    }

    pub fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
        self.pending.clear();
    }

    /// Reads the changelog of `partitions` (committed records only) from the beginning to
    /// the end into memory.
    pub fn load(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        let started = Instant::now();
        let consumer = kafka::reader_to_end(
            &self.kafka,
            "transactions-restore",
            &self.kafka.topics().scoped("transactions-restore"),
            Duration::from_millis(10),
        )?;
        read::assign_at(
            &consumer,
            &self.changelog,
            partitions,
            Start::Beginning,
            LOAD_TIMEOUT,
        )?;
        let mut loaded: HashMap<i32, HashMap<String, String>> =
            partitions.iter().map(|p| (*p, HashMap::new())).collect();
        read::read_to_end(
            &consumer,
            &self.changelog,
            partitions,
            LOAD_TIMEOUT,
            |message| {
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                match (key, decode::<Entry>(message.payload())) {
                    (Some(order_id), Ok(entry)) => {
                        loaded
                            .entry(message.partition())
                            .or_default()
                            .insert(order_id, entry.fingerprint);
                    }
                    (_, result) => warn!(
                        partition = message.partition(),
                        offset = message.offset(),
                        cause = %result.err().map(|e| e.to_string()).unwrap_or_else(|| "no key".into()),
                        "skipping an unreadable changelog record"
                    ),
                }
            },
        )?;
        let orders: usize = loaded.values().map(HashMap::len).sum();
        self.partitions.extend(loaded);
        info!(changelog = %self.changelog, ?partitions, orders, elapsed = ?started.elapsed(), "decided orders loaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided() -> Decided {
        let kafka = KafkaSettings::default();
        Decided::new(kafka, "changelog".into())
    }

    #[test]
    fn a_copy_is_the_same_and_other_content_under_the_id_is_different() {
        let mut state = decided();
        assert_eq!(state.check(0, "1001", "aa"), Seen::New);
        let record = state.record(0, "1001".into(), "aa".into(), DecisionStatus::Confirmed);
        assert_eq!(record.partition, Some(0));
        assert_eq!(record.key, "1001");
        assert_eq!(state.check(0, "1001", "aa"), Seen::Same);
        assert_eq!(state.check(0, "1001", "bb"), Seen::Different);
        assert_eq!(state.check(1, "1001", "aa"), Seen::New, "per partition");
    }

    #[test]
    fn an_abort_forgets_what_was_decided_since_the_last_commit() {
        let mut state = decided();
        state.record(0, "1".into(), "aa".into(), DecisionStatus::Confirmed);
        state.committed();
        state.record(0, "2".into(), "bb".into(), DecisionStatus::Declined);
        state.aborted();
        assert_eq!(state.check(0, "1", "aa"), Seen::Same);
        assert_eq!(state.check(0, "2", "bb"), Seen::New);
    }
}
