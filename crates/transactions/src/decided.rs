//! Which orders were decided: for each partition of `order_details`, every decided
//! `order_id` with the fingerprint of what the customer asked for.
//!
//! The state is a [`Store`]: its truth is a compacted changelog topic with the partitions of
//! `order_details`, one record per decided order in the partition of its order, written in
//! the same Kafka transaction as the decision and the consumer offsets (the way Kafka Streams
//! keeps a state store). So the state and the decisions are committed, or aborted, together:
//! an instance assigned a partition reads what the changelog got since its own copy's
//! checkpoint, and knows exactly the orders decided before its committed offset, whoever
//! decided them.

use common::KafkaSettings;
use common::events::DecisionStatus;
use common::kafka::Written;
use common::kafka::dead_letter::decode;
use common::kafka::exactly_once::Output;
use common::kafka::state::Store;
use serde::{Deserialize, Serialize};
use tracing::warn;

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
    store: Store,
}

impl Decided {
    /// The decided orders in `changelog`, with the on-disk copy of `owner` (the instance's
    /// transactional id).
    pub fn new(kafka: &KafkaSettings, changelog: String, owner: &str) -> Self {
        Self {
            store: Store::new(kafka, changelog, owner),
        }
    }

    pub fn check(&self, partition: i32, order_id: &str, fingerprint: &str) -> anyhow::Result<Seen> {
        let Some(value) = self.store.get(partition, order_id)? else {
            return Ok(Seen::New);
        };
        Ok(match decode::<Entry>(Some(&value)) {
            Ok(entry) if entry.fingerprint == fingerprint => Seen::Same,
            Ok(_) => Seen::Different,
            Err(err) => {
                warn!(partition, order_id, cause = %err, "unreadable entry in the decided orders; taking the order as new");
                Seen::New
            }
        })
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
            fingerprint,
            status,
        };
        // Two plain strings and an enum: serialising cannot fail.
        let payload = serde_json::to_vec(&entry).unwrap_or_default();
        self.store.put(partition, order_id, payload)
    }

    pub fn committed(&mut self, written: &Written) {
        self.store.committed(written);
    }

    pub fn aborted(&mut self) {
        self.store.aborted();
    }

    /// Brings the decided orders of newly assigned `partitions` up to date.
    pub fn load(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        self.store.restore(partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decided orders with an in-memory copy, opened without a broker.
    fn decided() -> Decided {
        let mut decided = Decided::new(&KafkaSettings::default(), "changelog".into(), "test");
        decided.store.open().unwrap();
        decided
    }

    #[test]
    fn a_copy_is_the_same_and_other_content_under_the_id_is_different() {
        let mut state = decided();
        assert_eq!(state.check(0, "1001", "aa").unwrap(), Seen::New);
        let record = state.record(0, "1001".into(), "aa".into(), DecisionStatus::Confirmed);
        assert_eq!(record.partition, Some(0));
        assert_eq!(record.key, "1001");
        assert_eq!(state.check(0, "1001", "aa").unwrap(), Seen::Same);
        assert_eq!(state.check(0, "1001", "bb").unwrap(), Seen::Different);
        assert_eq!(
            state.check(1, "1001", "aa").unwrap(),
            Seen::New,
            "per partition"
        );
    }

    #[test]
    fn an_abort_forgets_what_was_decided_since_the_last_commit() {
        let mut state = decided();
        state.record(0, "1".into(), "aa".into(), DecisionStatus::Confirmed);
        state.committed(&Written::default());
        state.record(0, "2".into(), "bb".into(), DecisionStatus::Declined);
        state.aborted();
        assert_eq!(state.check(0, "1", "aa").unwrap(), Seen::Same);
        assert_eq!(state.check(0, "2", "bb").unwrap(), Seen::New);
    }
}
