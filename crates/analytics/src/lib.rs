//! The analytics service: exact running totals of the decided orders.
//!
//! Reads `order_confirmed` and, for every decision, writes to `analytics_result` (keyed by the
//! order's UTC day) the seed's all-time `total_revenue` and `total_orders_count` plus that
//! day's revenue, orders and declines, all in exact decimal arithmetic and in the same Kafka
//! transaction as the consumer offsets.
//!
//! The totals span every partition of `order_confirmed`, so one instance at a time counts:
//! all instances share one transactional id, the latest to start fences the others, and a
//! fenced instance stands by, taking over when the active one stops making progress. On every
//! takeover the totals are restored from `analytics_result` itself (compacted, so it keeps the
//! latest result of each day), which was committed together with the offsets: the totals
//! are exactly those of the decisions before the committed offsets, never reset to zero.
//! `analytics_result` is the changelog of a state store ([`Store`]) of the latest result per
//! day: its copy on disk is read on from its checkpoints, so a restart reads only the results
//! written since, however many there are.

mod standby;
pub mod totals;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use common::events::AnalyticsResult;
use common::kafka::Written;
use common::kafka::dead_letter::decode;
use common::kafka::exactly_once::{
    ExactlyOnceConfig, Fenced, Membership, Output, Refused, Source, Transform, run_exactly_once,
};
use common::kafka::read::{self, Start};
use common::kafka::state::{self, Store};
use common::ops::{self, Tally};
use common::settings::{SettingsError, check_range, millis};
use common::{KafkaSettings, OrderDecision, Settings, Topic, kafka};
use rdkafka::message::Message;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::totals::Totals;

/// The analytics service's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AnalyticsSettings {
    /// `ANALYTICS_MAX_BATCH`: most decisions counted in one Kafka transaction.
    #[serde(rename = "analytics_max_batch")]
    pub max_batch: usize,
    /// `ANALYTICS_BATCH_WAIT_MS`: how long a batch may wait to fill.
    #[serde(rename = "analytics_batch_wait_ms", deserialize_with = "millis")]
    pub batch_wait: Duration,
    /// `ANALYTICS_TXN_TIMEOUT_MS`: after this long the broker aborts the open transaction of
    /// an instance that vanished.
    #[serde(rename = "analytics_txn_timeout_ms", deserialize_with = "millis")]
    pub txn_timeout: Duration,
    /// `ANALYTICS_TAKEOVER_AFTER_MS`: a standby takes over when new decisions wait this long
    /// without the active instance committing any.
    #[serde(rename = "analytics_takeover_after_ms", deserialize_with = "millis")]
    pub takeover_after: Duration,
    /// `ANALYTICS_OPS_ADDR`: where `/metrics`, `/healthz` and `/readyz` are served.
    #[serde(rename = "analytics_ops_addr")]
    pub ops_addr: SocketAddr,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            max_batch: 5_000,
            batch_wait: Duration::from_millis(10),
            txn_timeout: Duration::from_secs(10),
            takeover_after: Duration::from_secs(10),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9102)),
        }
    }
}

impl Settings for AnalyticsSettings {
    fn check(&self) -> Result<(), SettingsError> {
        check_range("ANALYTICS_MAX_BATCH", self.max_batch, 1..=100_000)?;
        check_range(
            "ANALYTICS_BATCH_WAIT_MS",
            self.batch_wait,
            Duration::ZERO..=Duration::from_secs(10),
        )?;
        check_range(
            "ANALYTICS_TXN_TIMEOUT_MS",
            self.txn_timeout,
            Duration::from_secs(1)..=Duration::from_secs(900),
        )?;
        check_range(
            "ANALYTICS_TAKEOVER_AFTER_MS",
            self.takeover_after,
            Duration::from_millis(500)..=Duration::from_secs(3_600),
        )
    }
}

/// Counts decisions into [`Totals`] and publishes the result of each.
struct Count {
    output_topic: String,
    totals: Totals,
    /// The totals as of the last committed transaction, to fall back to on an abort.
    committed: Totals,
    /// The `order_id`s counted, each in the changelog partition [`state::partition_of`] gives
    /// it (this instance reads every partition, and a decision may come on any).
    counted: Store,
    /// Partitions of the source, and so of the changelog.
    partitions: i32,
    /// The latest result of each day, under bucket 0: `analytics_result` is its changelog.
    results: Store,
    tally: Tally,
}

impl Transform for Count {
    type Input = OrderDecision;

    fn restore(&mut self) -> anyhow::Result<()> {
        self.results.restore_all()?;
        self.totals = Totals::default();
        for (day, payload) in self.results.entries(0)? {
            match decode::<AnalyticsResult>(Some(payload.as_slice())) {
                Ok(result) => self.totals.absorb(&result),
                Err(err) => {
                    warn!(day, cause = %err, "skipping an unreadable result while restoring")
                }
            }
        }
        self.committed = self.totals.clone();
        info!(
            seq = self.totals.seq,
            orders = self.totals.orders,
            declined = self.totals.declined,
            revenue = %self.totals.revenue,
            days = self.totals.days.len(),
            "totals restored from {}", self.output_topic
        );
        Ok(())
    }

    fn assigned(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        self.partitions = partitions.len() as i32;
        self.counted.restore(partitions)
    }

    fn apply(
        &mut self,
        decision: OrderDecision,
        _from: Source<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
        let order_id = decision.order.order_id.to_string();
        let partition = state::partition_of(&order_id, self.partitions);
        if self.counted.get(partition, &order_id)?.is_some() {
            debug!(order_id = %order_id, "counted before; skipping this decision");
            self.tally.count(
                "flatpack_duplicate_decisions_total",
                "status",
                decision.status.as_str(),
            );
            return Ok(());
        }
        out.push(self.counted.put(
            partition,
            order_id,
            decision.status.as_str().as_bytes().to_vec(),
        ));
        let result = self.totals.count(&decision);
        let status = decision.status.as_str();
        self.tally
            .count("flatpack_counted_decisions_total", "status", status);
        self.tally.reached("counted", decision.order.time);
        match serde_json::to_vec(&result) {
            Ok(payload) => out.push(self.results.put_any(0, result.day, payload)),
            Err(err) => warn!(cause = %err, "result could not be serialised"),
        }
        Ok(())
    }

    fn committed(&mut self, written: &Written) {
        self.counted.committed(written);
        self.results.committed(written);
        self.committed.clone_from(&self.totals);
        self.tally.commit();
    }

    fn aborted(&mut self) {
        self.counted.aborted();
        self.results.aborted();
        self.totals.clone_from(&self.committed);
        self.tally.abort();
    }
}

/// The changelog of the counted `order_id`s.
fn counted_changelog(kafka: &KafkaSettings) -> String {
    kafka.topics().changelog("analytics-counted")
}

/// Reads every committed result in `topic` to the end and rebuilds the totals from them.
pub fn read_totals(kafka_settings: &KafkaSettings, topic: &str) -> anyhow::Result<Totals> {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let consumer = kafka::reader_to_end(
        kafka_settings,
        "analytics-restore",
        &kafka_settings.topics().scoped("analytics-restore"),
        Duration::from_millis(10),
    )?;
    let partitions = read::assign_all(&consumer, topic, Start::Beginning, TIMEOUT)?;
    let mut totals = Totals::default();
    read::read_to_end(
        &consumer,
        topic,
        &partitions,
        Duration::from_secs(300),
        |message| match decode::<AnalyticsResult>(message.payload()) {
            Ok(result) => totals.absorb(&result),
            Err(err) => warn!(
                partition = message.partition(),
                offset = message.offset(),
                cause = %err,
                "skipping an unreadable result while restoring"
            ),
        },
    )?;
    Ok(totals)
}

/// Counts decisions until `shutdown` completes; stands by while another instance counts.
pub async fn run(
    kafka_settings: KafkaSettings,
    settings: AnalyticsSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = common::shutdown::cancelled_by(shutdown);
    let topic = kafka_settings.topics().name(Topic::OrderConfirmed);
    let ready = ops::broker_readiness(&kafka_settings, topic.clone())?;
    tokio::spawn(ops::serve(settings.ops_addr, ready, stop.clone()).await?);
    if !kafka::await_stage_topics(
        &kafka_settings,
        Topic::OrderConfirmed,
        Topic::AnalyticsResult,
        &stop,
    )
    .await
    {
        return Ok(());
    }
    if !kafka::await_changelog(
        &kafka_settings,
        &topic,
        &counted_changelog(&kafka_settings),
        &stop,
    )
    .await
    {
        return Ok(());
    }
    common::shutdown::run_blocking_until(stop.cancelled_owned(), move |stop| {
        work(&kafka_settings, &settings, &stop)
    })
    .await
}

/// Alternates between counting and standing by until `stop`.
fn work(
    kafka_settings: &KafkaSettings,
    settings: &AnalyticsSettings,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let topics = kafka_settings.topics();
    let config = ExactlyOnceConfig {
        service: "analytics",
        source: Topic::OrderConfirmed,
        membership: Membership::Exclusive,
        group_id: topics.scoped("analytics"),
        transactional_id: topics.scoped("analytics"),
        max_batch: settings.max_batch,
        max_batch_wait: settings.batch_wait,
        transaction_timeout: settings.txn_timeout,
    };
    loop {
        let count = Count {
            output_topic: topics.name(Topic::AnalyticsResult),
            totals: Totals::default(),
            committed: Totals::default(),
            counted: Store::new(
                kafka_settings,
                counted_changelog(kafka_settings),
                &config.transactional_id,
            ),
            partitions: 1,
            results: Store::new(
                kafka_settings,
                topics.name(Topic::AnalyticsResult),
                &format!("{}-results", config.transactional_id),
            ),
            tally: Tally::default(),
        };
        match run_exactly_once(kafka_settings, &config, count, stop) {
            Ok(()) => return Ok(()),
            Err(err) if err.is::<Fenced>() => {
                info!("another analytics instance is counting; standing by");
                let takeover = settings.takeover_after;
                if !standby::wait_for_takeover(kafka_settings, &config, takeover, stop)? {
                    return Ok(());
                }
                info!("the active instance stalled; taking over");
            }
            Err(err) => return Err(err),
        }
    }
}
