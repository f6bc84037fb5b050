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

mod standby;
pub mod totals;

use std::future::Future;
use std::time::Duration;

use common::events::AnalyticsResult;
use common::kafka::dead_letter::decode;
use common::kafka::exactly_once::{
    ExactlyOnceConfig, Fenced, Membership, Output, Source, Transform, run_exactly_once,
};
use common::kafka::read::{self, Start};
use common::{KafkaSettings, OrderDecision, Topic, kafka};
use rdkafka::message::Message;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::totals::Totals;

/// The analytics service's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct AnalyticsSettings {
    /// `ANALYTICS_MAX_BATCH`: most decisions counted in one Kafka transaction.
    #[serde(rename = "analytics_max_batch", default = "default_max_batch")]
    pub max_batch: usize,
    /// `ANALYTICS_BATCH_WAIT_MS`: how long a batch may wait to fill.
    #[serde(rename = "analytics_batch_wait_ms", default = "default_batch_wait")]
    pub batch_wait_ms: u64,
    /// `ANALYTICS_TXN_TIMEOUT_MS`: after this long the broker aborts the open transaction of
    /// an instance that vanished.
    #[serde(rename = "analytics_txn_timeout_ms", default = "default_txn_timeout")]
    pub txn_timeout_ms: u64,
    /// `ANALYTICS_TAKEOVER_AFTER_MS`: a standby takes over when new decisions wait this long
    /// without the active instance committing any.
    #[serde(rename = "analytics_takeover_after_ms", default = "default_takeover")]
    pub takeover_after_ms: u64,
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
fn default_takeover() -> u64 {
    10_000
}

impl AnalyticsSettings {
    pub fn from_env() -> Result<Self, common::settings::SettingsError> {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, common::settings::SettingsError> {
        use common::settings::check_range;
        let settings: Self = common::settings::from_vars(vars)?;
        check_range("ANALYTICS_MAX_BATCH", settings.max_batch, 1..=100_000)?;
        check_range(
            "ANALYTICS_BATCH_WAIT_MS",
            settings.batch_wait_ms,
            0..=10_000,
        )?;
        check_range(
            "ANALYTICS_TXN_TIMEOUT_MS",
            settings.txn_timeout_ms,
            1_000..=900_000,
        )?;
        check_range(
            "ANALYTICS_TAKEOVER_AFTER_MS",
            settings.takeover_after_ms,
            500..=3_600_000,
        )?;
        Ok(settings)
    }
}

/// Counts decisions into [`Totals`] and publishes the result of each.
struct Count {
    kafka: KafkaSettings,
    output_topic: String,
    totals: Totals,
    /// The totals as of the last committed transaction, to fall back to on an abort.
    committed: Totals,
}

impl Transform for Count {
    type Input = OrderDecision;

    fn restore(&mut self) -> anyhow::Result<()> {
        self.totals = read_totals(&self.kafka, &self.output_topic)?;
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

    fn apply(
        &mut self,
        decision: OrderDecision,
        _from: Source<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), String> {
        let result = self.totals.count(&decision);
        match serde_json::to_vec(&result) {
            Ok(payload) => out.push(Output::new(&self.output_topic, result.day, payload)),
            Err(err) => warn!(cause = %err, "result could not be serialised"),
        }
        Ok(())
    }

    fn committed(&mut self) {
        self.committed.clone_from(&self.totals);
    }

    fn aborted(&mut self) {
        self.totals.clone_from(&self.committed);
    }
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
        max_batch_wait: Duration::from_millis(settings.batch_wait_ms),
        transaction_timeout: Duration::from_millis(settings.txn_timeout_ms),
    };
    loop {
        let count = Count {
            kafka: kafka_settings.clone(),
            output_topic: topics.name(Topic::AnalyticsResult),
            totals: Totals::default(),
            committed: Totals::default(),
        };
        match run_exactly_once(kafka_settings, &config, count, stop) {
            Ok(()) => return Ok(()),
            Err(err) if err.is::<Fenced>() => {
                info!("another analytics instance is counting; standing by");
                let takeover = Duration::from_millis(settings.takeover_after_ms);
                if !standby::wait_for_takeover(kafka_settings, &config, takeover, stop)? {
                    return Ok(());
                }
                info!("the active instance stalled; taking over");
            }
            Err(err) => return Err(err),
        }
    }
}
