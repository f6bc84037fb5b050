//! flatpack's Kafka runtime: every service talks to the broker through this module.
//!
//! - [`client`]: building producers and consumers the same way everywhere (idempotent
//!   `acks=all` producers, `read_committed` consumers that never commit on their own), and
//!   the [`FlatpackContext`] that routes librdkafka's logs and rebalances into `tracing`.
//! - [`admin`]: creating the topics a service needs and waiting for a broker that is not
//!   there yet, saying what it waits for.
//! - [`read`]: the reading toolkit: assign every partition of a topic at an offset, read the
//!   assigned partitions to their end, follow a topic on a thread of its own.
//! - [`exactly_once`]: the consume-transform-produce loop in Kafka transactions
//!   (transactions, analytics).
//! - [`at_least_once`]: the loop for side effects outside Kafka, retried until they succeed
//!   and deduplicated by key (email).
//! - [`state`]: keyed state stores kept the way Kafka Streams keeps them (a compacted
//!   changelog, and an on-disk copy with checkpoints) for the decided orders, the counted
//!   orders and the e-mailed ones.
//! - [`dead_letter`]: decoding a message, and where one that cannot be handled goes.

pub mod admin;
pub mod at_least_once;
pub mod client;
pub mod dead_letter;
pub mod exactly_once;
pub mod read;
pub mod state;

pub use admin::{
    COMPACTED_TOPIC_CONFIG, await_changelog, await_stage_topics, await_topics, broker_answers,
    ensure_plain_topics, ensure_topics, retry_until_ok,
};
pub use client::{
    COMPLAINT_INTERVAL, FlatpackContext, Throttle, Written, acknowledged, base_config, consumer,
    consumer_must_be_replaced, consumer_with, describe, follower, producer, reader_to_end,
    stream_consumer, transactional_producer,
};
