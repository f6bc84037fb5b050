//! Fault tests: the whole pipeline, every service a process of its own, under a steady
//! stream of orders posted over HTTP, while its brokers are killed, stopped and restarted, or
//! its own processes are killed.
//!
//! The tests that hurt brokers start brokers of their own (`scripts/kafka.sh`, Apache Kafka
//! from the Maven Central jars): one, or a cluster of three. They run one at a time, each
//! needing most of the machine. Mailpit comes from the test run (`MAILPIT_SMTP`,
//! `MAILPIT_HTTP`), as for the system tests.
//!
//! What each asserts is exact: every order answered `200` has exactly one decision, one
//! `order_email_sent` record, one e-mail (one `Message-ID`) and is counted once by analytics;
//! every order answered `503` has none of these.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker_faults;
mod brokers;
#[allow(dead_code)]
#[path = "../system/helpers/mod.rs"]
mod helpers;
mod pipeline;
mod service_kills;

/// Held by every fault test while it runs: each one loads the machine on its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
