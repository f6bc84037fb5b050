//! System tests: the flatpack services against a real Kafka broker.
//!
//! The broker comes from `KAFKA_BOOTSTRAP_SERVERS` (set by `scripts/test.sh`, which starts
//! one from the Apache Kafka jars), else from an `apache/kafka` container; see
//! [`helpers::broker`]. Each test works in its own topic namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod compose;
mod dashboard;
mod dead_letters;
mod docs;
mod email;
mod helpers;
mod idempotency;
mod loadgen;
mod metrics;
mod openapi;
mod orders_api;
mod scripts;
mod traces;
mod transactions;

/// Skips the test (loudly) when there is no broker outside CI; see [`helpers::broker`].
#[macro_export]
macro_rules! test_env {
    () => {
        match $crate::helpers::test_env().await {
            Some(env) => env,
            None => return,
        }
    };
}
