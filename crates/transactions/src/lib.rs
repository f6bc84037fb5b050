//! The transactions service: decides every order exactly once.
//!
//! Reads `order_details`, asks a [`PaymentCheck`] about each order, and writes the decision
//! (`confirmed`, or `declined` with a reason) to `order_confirmed`, keyed by `order_id`, in the
//! same Kafka transaction as the consumer offsets. Orders that cannot be decoded go to
//! `order_details.dlq`.
//!
//! One `order_id`, one decision, ever: the orders decided are kept per partition in a
//! changelog ([`decided`]) written in the same transaction. A copy of a decided order (a
//! client's retry, a producer's repeated write) is skipped; another order under a used
//! `order_id` goes to `order_details.dlq` saying so. An order whose message key is not its
//! `order_id` (the seed's producer writes none) is first written again under its `order_id`,
//! so that every copy of one order meets in one partition.

pub mod decided;
pub mod payment;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use common::events::{DecisionStatus, Order, OrderDecision, SCHEMA_VERSION, now_epoch_seconds};
use common::kafka::Written;
use common::kafka::exactly_once::{
    ExactlyOnceConfig, Membership, Output, Refused, Source, Transform, run_exactly_once,
};
use common::ops::{self, Tally};
use common::settings::{SettingsError, check_range, millis};
use common::{KafkaSettings, Settings, Topic, kafka};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::decided::{Decided, Seen};

pub use payment::{PaymentCheck, RulesCheck, Verdict};

/// The transactions service's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TransactionsSettings {
    /// `TRANSACTIONS_INSTANCE_ID`: names this instance's transactional id; must be unique
    /// among running instances and stay the same across restarts of one instance. Default:
    /// `HOSTNAME`, else `transactions-1`.
    #[serde(rename = "transactions_instance_id")]
    pub instance_id: String,
    /// `TRANSACTIONS_MAX_BATCH`: most orders decided in one Kafka transaction.
    #[serde(rename = "transactions_max_batch")]
    pub max_batch: usize,
    /// `TRANSACTIONS_BATCH_WAIT_MS`: how long a batch may wait to fill.
    #[serde(rename = "transactions_batch_wait_ms", deserialize_with = "millis")]
    pub batch_wait: Duration,
    /// `TRANSACTIONS_TXN_TIMEOUT_MS`: after this long the broker aborts the open transaction of
    /// an instance that vanished.
    #[serde(rename = "transactions_txn_timeout_ms", deserialize_with = "millis")]
    pub txn_timeout: Duration,
    /// `TRANSACTIONS_OPS_ADDR`: where `/metrics`, `/healthz` and `/readyz` are served.
    #[serde(rename = "transactions_ops_addr")]
    pub ops_addr: SocketAddr,
}

impl Default for TransactionsSettings {
    fn default() -> Self {
        Self {
            instance_id: std::env::var("HOSTNAME").unwrap_or_else(|_| "transactions-1".into()),
            max_batch: 5_000,
            batch_wait: Duration::from_millis(10),
            txn_timeout: Duration::from_secs(10),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9101)),
        }
    }
}

impl Settings for TransactionsSettings {
    fn check(&self) -> Result<(), SettingsError> {
        if self.instance_id.trim().is_empty() {
            return Err(SettingsError::new(
                "TRANSACTIONS_INSTANCE_ID",
                "must not be empty",
            ));
        }
        check_range("TRANSACTIONS_MAX_BATCH", self.max_batch, 1..=100_000)?;
        check_range(
            "TRANSACTIONS_BATCH_WAIT_MS",
            self.batch_wait,
            Duration::ZERO..=Duration::from_secs(10),
        )?;
        check_range(
            "TRANSACTIONS_TXN_TIMEOUT_MS",
            self.txn_timeout,
            Duration::from_secs(1)..=Duration::from_secs(900),
        )
    }
}

/// Turns each order into its decision, once per `order_id`.
#[derive(Debug)]
pub struct Decide<P> {
    check: P,
    source_topic: String,
    output_topic: String,
    decided: Decided,
    tally: Tally,
}

impl<P: PaymentCheck> Decide<P> {
    /// `instance`: the transactional id, which also names the on-disk copy of the state.
    pub fn new(check: P, kafka: &KafkaSettings, instance: &str) -> Self {
        let topics = kafka.topics();
        Self {
            check,
            source_topic: topics.name(Topic::OrderDetails),
            output_topic: topics.name(Topic::OrderConfirmed),
            decided: Decided::new(kafka, changelog(kafka), instance),
            tally: Tally::default(),
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

    fn apply(
        &mut self,
        order: Order,
        from: Source<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
        let order_id = order.order_id.to_string();
        if from.key != Some(order_id.as_bytes()) {
            debug!(order_id = %order_id, partition = from.partition, "order keyed by something else; writing it again under its order_id");
            out.push(Output::new(
                &self.source_topic,
                order_id,
                from.payload.to_vec(),
            ));
            return Ok(());
        }
        let fingerprint = order.fingerprint();
        match self
            .decided
            .check(from.partition, &order_id, &fingerprint)?
        {
            Seen::Same => {
                debug!(order_id = %order_id, "decided before; skipping this copy");
                self.tally
                    .count("flatpack_duplicate_orders_total", "outcome", "skipped");
                return Ok(());
            }
            Seen::Different => {
                self.tally
                    .count("flatpack_duplicate_orders_total", "outcome", "refused");
                return Err(Refused::DeadLetter(format!(
                    "order_id {order_id} was already used for a different order; a new order needs a new order_id"
                )));
            }
            Seen::New => {}
        }
        let decision = self.decide(order);
        match serde_json::to_vec(&decision) {
            Ok(payload) => {
                let status = decision.status.as_str();
                self.tally
                    .count("flatpack_decisions_total", "status", status);
                self.tally.reached("decided", decision.order.time);
                out.push(Output::new(&self.output_topic, order_id.clone(), payload));
                out.push(self.decided.record(
                    from.partition,
                    order_id,
                    fingerprint,
                    decision.status,
                ));
            }
            // Cannot happen for a decoded order (every field serialises); logged, not hidden.
            Err(err) => {
                warn!(order_id = %order_id, cause = %err, "decision could not be serialised")
            }
        }
        Ok(())
    }

    fn assigned(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        self.decided.load(partitions)
    }

    fn committed(&mut self, written: &Written) {
        self.decided.committed(written);
        self.tally.commit();
    }

    fn aborted(&mut self) {
        self.decided.aborted();
        self.tally.abort();
    }
}

/// The changelog of the decided orders.
fn changelog(kafka: &KafkaSettings) -> String {
    kafka.topics().changelog("transactions-decided")
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
    let ready = ops::broker_readiness(&kafka_settings, topics.name(Topic::OrderDetails))?;
    tokio::spawn(ops::serve(settings.ops_addr, ready, stop.clone()).await?);
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
    let source = topics.name(Topic::OrderDetails);
    if !kafka::await_changelog(&kafka_settings, &source, &changelog(&kafka_settings), &stop).await {
        return Ok(());
    }
    let config = ExactlyOnceConfig {
        service: "transactions",
        source: Topic::OrderDetails,
        membership: Membership::Group,
        group_id: topics.scoped("transactions"),
        transactional_id: topics.scoped(&format!("transactions-{}", settings.instance_id)),
        max_batch: settings.max_batch,
        max_batch_wait: settings.batch_wait,
        transaction_timeout: settings.txn_timeout,
    };
    let transform = Decide::new(check, &kafka_settings, &config.transactional_id);
    common::shutdown::run_blocking_until(stop.cancelled_owned(), move |stop| {
        run_exactly_once(&kafka_settings, &config, transform, &stop)
    })
    .await
}
