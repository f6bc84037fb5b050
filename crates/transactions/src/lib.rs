//! The transactions service: decides every order exactly once.
//!
//! Reads `order_details`, asks a [`PaymentCheck`] about each order, and writes the decision
//! (`confirmed`, or `declined` with a reason) to `order_confirmed`, keyed by `order_id`, in the
//! same Kafka transaction as the consumer offsets. Orders that cannot be decoded go to
//! `order_details.dlq`.

pub mod payment;

use std::future::Future;
use std::time::Duration;

use common::events::{DecisionStatus, Order, OrderDecision, SCHEMA_VERSION, now_epoch_seconds};
use common::pipeline::{ExactlyOnceConfig, Membership, Output, Transform, run_exactly_once};
use common::{KafkaSettings, Topic, kafka};
use serde::Deserialize;
use tracing::warn;

pub use payment::{PaymentCheck, RulesCheck, Verdict};

/// The transactions service's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct TransactionsSettings {
    /// `TRANSACTIONS_INSTANCE_ID`: names this instance's transactional id; must be unique
    /// among running instances and stay the same across restarts of one instance.
    #[serde(rename = "transactions_instance_id", default = "default_instance")]
    pub instance_id: String,
    /// `TRANSACTIONS_MAX_BATCH`: most orders decided in one Kafka transaction.
    #[serde(rename = "transactions_max_batch", default = "default_max_batch")]
    pub max_batch: usize,
    /// `TRANSACTIONS_BATCH_WAIT_MS`: how long a batch may wait to fill.
    #[serde(rename = "transactions_batch_wait_ms", default = "default_batch_wait")]
    pub batch_wait_ms: u64,
    /// `TRANSACTIONS_TXN_TIMEOUT_MS`: after this long the broker aborts the open transaction of
    /// an instance that vanished.
    #[serde(
        rename = "transactions_txn_timeout_ms",
        default = "default_txn_timeout"
    )]
    pub txn_timeout_ms: u64,
}

fn default_instance() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "transactions-1".into())
}
fn default_max_batch() -> usize {
    5_000
}
fn default_batch_wait() -> u64 {
    10
}
fn default_txn_timeout() -> u64 {
    10_000
}

impl TransactionsSettings {
    pub fn from_env() -> Result<Self, common::settings::SettingsError> {
        use common::settings::{SettingsError, check_range};
        let settings: Self = common::settings::from_env()?;
        if settings.instance_id.trim().is_empty() {
            return Err(SettingsError::new(
                "TRANSACTIONS_INSTANCE_ID",
                "must not be empty",
            ));
        }
        check_range("TRANSACTIONS_MAX_BATCH", settings.max_batch, 1..=100_000)?;
        check_range(
            "TRANSACTIONS_BATCH_WAIT_MS",
            settings.batch_wait_ms,
            0..=10_000,
        )?;
        check_range(
            "TRANSACTIONS_TXN_TIMEOUT_MS",
            settings.txn_timeout_ms,
            1_000..=900_000,
        )?;
        Ok(settings)
    }
}

/// Turns each order into its decision.
#[derive(Debug)]
pub struct Decide<P> {
    check: P,
    output_topic: String,
}

impl<P: PaymentCheck> Decide<P> {
    pub fn new(check: P, output_topic: String) -> Self {
        Self {
            check,
            output_topic,
        }
    }

    /// The decision on one order.
    pub fn decide(&self, order: Order) -> OrderDecision {
        let (status, reason) = match self.check.check(&order) {
            Verdict::Approved => (DecisionStatus::Confirmed, None),
            Verdict::Declined(reason) => (DecisionStatus::Declined, Some(reason)),
        };
        OrderDecision {
            order: Order {
                schema: SCHEMA_VERSION,
                ..order
            },
            status,
            reason,
            decided_at: Some(now_epoch_seconds()),
        }
    }
}

impl<P: PaymentCheck> Transform for Decide<P> {
    type Input = Order;

    fn apply(&mut self, order: Order, out: &mut Vec<Output>) {
        let decision = self.decide(order);
        let key = decision.order.order_id.to_string();
        match serde_json::to_vec(&decision) {
            Ok(payload) => out.push(Output {
                topic: self.output_topic.clone(),
                key,
                payload,
            }),
            // Cannot happen for a decoded order (every field serialises); logged, not hidden.
            Err(err) => warn!(order_id = %key, cause = %err, "decision could not be serialised"),
        }
    }
}

/// Decides orders exactly once until `shutdown` completes; then finishes the open batch,
/// commits and returns.
pub async fn run<P: PaymentCheck>(
    kafka_settings: KafkaSettings,
    settings: TransactionsSettings,
    check: P,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topics = kafka_settings.topics();
    let stop = common::shutdown::cancelled_by(shutdown);
    if !kafka::await_stage_topics(
        &kafka_settings,
        Topic::OrderDetails,
        Topic::OrderConfirmed,
        &stop,
    )
    .await
    {
        return Ok(());
    }
    let config = ExactlyOnceConfig {
        service: "transactions",
        source: Topic::OrderDetails,
        membership: Membership::Group,
        group_id: topics.scoped("transactions"),
        transactional_id: topics.scoped(&format!("transactions-{}", settings.instance_id)),
        max_batch: settings.max_batch,
        max_batch_wait: Duration::from_millis(settings.batch_wait_ms),
        transaction_timeout: Duration::from_millis(settings.txn_timeout_ms),
    };
    let transform = Decide::new(check, topics.name(Topic::OrderConfirmed));
    common::shutdown::run_blocking_until(stop.cancelled_owned(), move |stop| {
        run_exactly_once(&kafka_settings, &config, transform, &stop)
    })
    .await
}
