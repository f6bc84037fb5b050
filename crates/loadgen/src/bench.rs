//! The measurements of `scripts/bench.sh` besides the HTTP load of [`crate::run`]:
//!
//! - [`produce`]: the broker's raw produce capacity for orders as the orders service writes
//!   them, through the same idempotent, `acks=all` producer ([`common::kafka::producer`]);
//! - [`smtp`]: how fast the SMTP server accepts the e-mails the email service sends, through
//!   the email service's own sender ([`email::SendEmail`]);
//! - [`feed`]: how fast a pipeline (flatpack's or the seed's) turns orders written straight to
//!   `order_details` into analytics totals;
//! - [`email_stage`]: how fast the email service turns decided orders written straight to
//!   `order_confirmed` into e-mails and `order_email_sent` records;
//! - [`create_topics`]: the topics, for the seed, which creates none (the bench broker has
//!   `auto.create.topics.enable=false`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::events::{Order, OrderDecision, SCHEMA_VERSION, now_epoch_seconds};
use common::kafka::at_least_once::Handler;
use common::kafka::read::Follower;
use common::{KafkaSettings, Topic, kafka};
use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::message::BorrowedMessage;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::Latency;
use crate::steady::{self, Measurement, Rate};

/// How long one write may wait for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `order_details` record of order number `n`, byte for byte as the orders service writes
/// an accepted order (the body [`crate::run`] posts, plus `time` and `schema`).
pub fn order_record(id: &str, n: u64, price: Decimal) -> anyhow::Result<Vec<u8>> {
    let mut body = crate::order(id, n, price);
    body["time"] = serde_json::json!(now_epoch_seconds());
    body["schema"] = serde_json::json!(SCHEMA_VERSION);
    let order: Order = serde_json::from_value(body).context("building a sample order")?;
    Ok(serde_json::to_vec(&order)?)
}

/// Writes `count` orders `<run_id>-<first>..` to `topic` with at most `in_flight`
/// unacknowledged, each made as it is sent; counts the acknowledged ones in `acked` and
/// returns the failures.
async fn write_orders(
    producer: &FutureProducer<kafka::FlatpackContext>,
    topic: &str,
    (run_id, first, count): (&str, u64, u64),
    price: Decimal,
    in_flight: usize,
    acked: &AtomicU64,
) -> u64 {
    let records = (first..first + count).map(|n| {
        let id = format!("{run_id}-{n}");
        order_record(&id, n, price).map(|payload| (id, payload))
    });
    write_records(producer, topic, records, in_flight, acked).await
}

/// Writes `(key, payload)` records to `topic` with at most `in_flight` unacknowledged;
/// counts the acknowledged ones in `acked` and returns the failures (a record that could
/// not be made is one).
async fn write_records(
    producer: &FutureProducer<kafka::FlatpackContext>,
    topic: &str,
    records: impl IntoIterator<Item = anyhow::Result<(String, Vec<u8>)>>,
    in_flight: usize,
    acked: &AtomicU64,
) -> u64 {
    let failed = AtomicU64::new(0);
    let failed_ref = &failed;
    futures::stream::iter(records)
        .for_each_concurrent(in_flight.max(1), |record| async move {
            let acknowledged = match &record {
                Ok((id, payload)) => producer
                    .send(
                        FutureRecord::to(topic).key(id).payload(payload),
                        Timeout::After(DELIVERY_TIMEOUT),
                    )
                    .await
                    .map_err(|(err, _)| err)
                    .and_then(kafka::acknowledged)
                    .is_ok(),
                Err(_) => false,
            };
            let counter = if acknowledged { acked } else { failed_ref };
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .await;
    failed.into_inner()
}

/// The raw produce measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProduceReport {
    pub topic: String,
    pub messages: u64,
    pub failed: u64,
    /// The size of one record's value: one order as the orders service writes it.
    pub message_bytes: usize,
    pub in_flight: usize,
    /// Acknowledged messages per second, from the first write (after a warm-up message) to
    /// the last acknowledgement.
    #[serde(flatten)]
    pub rate: Rate,
    pub megabytes_per_second: f64,
}

impl Measurement for ProduceReport {
    fn rate(&self) -> &Rate {
        &self.rate
    }

    fn summary(&self) -> String {
        format!(
            "produce: {} messages of {} bytes to {} in {:.2} s: {:.0} msg/s ({}), {:.2} MB/s, {} failed\n",
            self.messages,
            self.message_bytes,
            self.topic,
            self.rate.seconds,
            self.rate.per_second,
            self.rate.describe_steady(),
            self.megabytes_per_second,
            self.failed
        )
    }
}

/// Writes `messages` orders to `<prefix>order_details` (created if missing) through
/// [`common::kafka::producer`] and measures from the first write (after one warm-up message)
/// until the last acknowledgement.
pub async fn produce(
    kafka_settings: &KafkaSettings,
    messages: u64,
    in_flight: usize,
    price: Decimal,
) -> anyhow::Result<ProduceReport> {
    let topic = kafka_settings.topics().name(Topic::OrderDetails);
    kafka::ensure_topics(kafka_settings, std::slice::from_ref(&topic)).await?;
    let producer = kafka::producer(kafka_settings, "loadgen-produce", DELIVERY_TIMEOUT)?;
    let run_id = format!("raw-{:08x}", rand::random::<u32>());
    let message_bytes = order_record(&format!("{run_id}-1"), 1, price)?.len();
    // Warm-up before the clock starts: metadata, connections and the idempotent producer id.
    let warmup = format!("{run_id}-warmup");
    let acked = AtomicU64::new(0);
    let failed = write_orders(&producer, &topic, (&warmup, 1, 1), price, 1, &acked).await;
    anyhow::ensure!(failed == 0, "writing a warm-up message to {topic}");
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let counted = acked.clone();
    let (failed, timeline) = steady::sampled(
        move || counted.load(Ordering::Relaxed),
        write_orders(
            &producer,
            &topic,
            (&run_id, 1, messages),
            price,
            in_flight,
            &acked,
        ),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    let acked = messages - failed;
    Ok(ProduceReport {
        topic,
        messages,
        failed,
        message_bytes,
        in_flight,
        rate: Rate::of(acked, seconds, &timeline),
        megabytes_per_second: (acked as f64 * message_bytes as f64) / seconds / 1e6,
    })
}

/// The SMTP measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SmtpReport {
    pub smtp: String,
    pub emails: u64,
    /// Accepted by the server.
    pub sent: u64,
    /// Refused for good, or not sent at all.
    pub failed: u64,
    pub concurrency: usize,
    /// Accepted e-mails per second, from the first e-mail sent (after one per connection as
    /// a warm-up) to the last answer.
    #[serde(flatten)]
    pub rate: Rate,
    /// One e-mail, from the first SMTP command to the server's acceptance.
    pub latency: Latency,
}

impl Measurement for SmtpReport {
    fn rate(&self) -> &Rate {
        &self.rate
    }

    fn summary(&self) -> String {
        format!(
            "smtp: {} of {} e-mails accepted by {} in {:.2} s with {} connections: {:.0} e-mails/s ({}, p99 {:.2} ms)\n",
            self.sent,
            self.emails,
            self.smtp,
            self.rate.seconds,
            self.concurrency,
            self.rate.per_second,
            self.rate.describe_steady(),
            self.latency.p99_ms
        )
    }
}

/// The decision the email service would get for order number `n`: a confirmation of the
/// order [`crate::run`] posts.
fn decision(run_id: &str, n: u64, price: Decimal) -> anyhow::Result<OrderDecision> {
    let mut value: serde_json::Value =
        serde_json::from_slice(&order_record(&format!("{run_id}-{n}"), n, price)?)?;
    value["status"] = serde_json::json!("confirmed");
    value["decided_at"] = serde_json::json!(now_epoch_seconds());
    serde_json::from_value(value).context("building a sample decision")
}

/// Sends `emails` confirmations with the email service's sender, `concurrency` at a time
/// (each on a sender and connection of its own, as that many email services would).
pub async fn smtp(
    settings: &email::EmailSettings,
    emails: u64,
    concurrency: usize,
    price: Decimal,
) -> anyhow::Result<SmtpReport> {
    let run_id = format!("smtp-{:08x}", rand::random::<u32>());
    let next = AtomicU64::new(1);
    let sent = Arc::new(AtomicU64::new(0));
    let histogram = Mutex::new(Histogram::<u64>::new(3)?);
    // Warm-up: one connection per sender before the clock starts.
    let mut senders = Vec::with_capacity(concurrency.max(1));
    for _ in 0..concurrency.max(1) {
        let sender = email::SendEmail::new(settings, "unused".into())?;
        sender.handle(&decision(&run_id, 0, price)?).await?;
        senders.push(sender);
    }
    let started = Instant::now();
    let counted = sent.clone();
    let (next, sent, histogram) = (&next, &*sent, &histogram);
    let workers = senders.into_iter().map(|sender| {
        let run_id = run_id.clone();
        async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n > emails {
                    return anyhow::Ok(());
                }
                let decision = decision(&run_id, n, price)?;
                let began = Instant::now();
                let outputs = sender.handle(&decision).await;
                let took = began.elapsed();
                let accepted = outputs.is_ok_and(|outputs| {
                    outputs.iter().all(|o| {
                        serde_json::from_slice::<serde_json::Value>(&o.payload)
                            .is_ok_and(|v| v["status"] == serde_json::json!(true))
                    })
                });
                if accepted {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                    let _ = histogram
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(micros.max(1));
                }
            }
        }
    });
    let (results, timeline) = steady::sampled(
        move || counted.load(Ordering::Relaxed),
        futures::future::join_all(workers),
    )
    .await;
    for result in results {
        result?;
    }
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    let sent = sent.load(Ordering::Relaxed);
    let histogram = histogram.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(SmtpReport {
        smtp: format!("{}:{}", settings.smtp_host, settings.smtp_port),
        emails,
        sent,
        failed: emails - sent,
        concurrency: concurrency.max(1),
        rate: Rate::of(sent, seconds, &timeline),
        latency: Latency::of(&histogram),
    })
}

/// How a measurement that writes straight to a topic and waits for what comes out runs.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Pacing {
    /// Unacknowledged writes at most.
    #[arg(long, default_value_t = 10_000)]
    pub in_flight: usize,
    /// Seconds to wait for the warm-up to come through.
    #[arg(long, default_value_t = 60)]
    pub warmup_seconds: u64,
    /// Seconds to wait, after the last write, for the last to come through.
    #[arg(long, default_value_t = 300)]
    pub settle_seconds: u64,
}

impl Pacing {
    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_seconds)
    }

    pub fn settle(&self) -> Duration {
        Duration::from_secs(self.settle_seconds)
    }
}

/// The pipeline measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedReport {
    pub order_details: String,
    pub analytics_result: String,
    pub orders: u64,
    pub failed: u64,
    /// Warm-up orders written before the clock started (until the pipeline answered).
    pub warmup_orders: u64,
    /// `total_orders_count` before the measured orders.
    pub count_before: u64,
    /// The highest `total_orders_count` seen at the end.
    pub count_after: u64,
    /// From the first order written to the last acknowledged.
    pub write_seconds: f64,
    /// Orders per second through the pipeline, from the first order written to the totals
    /// counting all of them (`orders / seconds`; 0 when they never did).
    #[serde(flatten)]
    pub rate: Rate,
    /// Every order was counted exactly once (the totals grew by exactly `orders`).
    pub complete: bool,
}

impl Measurement for FeedReport {
    fn rate(&self) -> &Rate {
        &self.rate
    }

    fn summary(&self) -> String {
        format!(
            "feed: {} orders to {} written in {:.2} s, counted on {} after {:.2} s: {:.0} orders/s ({}); count {} → {} ({})\n",
            self.orders,
            self.order_details,
            self.write_seconds,
            self.analytics_result,
            self.rate.seconds,
            self.rate.per_second,
            self.rate.describe_steady(),
            self.count_before,
            self.count_after,
            if self.complete { "exact" } else { "INCOMPLETE" }
        )
    }
}

/// The highest `total_orders_count` on an analytics topic, and when it was first seen.
#[derive(Debug, Default)]
struct Count {
    value: Option<u64>,
    changed: Option<Instant>,
}

impl Count {
    /// Keeps the `total_orders_count` of an analytics result if it grew.
    fn observe(&mut self, message: &BorrowedMessage<'_>) {
        let Ok(value) =
            serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default())
        else {
            return;
        };
        if let Some(n) = value["total_orders_count"].as_u64()
            && self.value.is_none_or(|c| n > c)
        {
            self.value = Some(n);
            self.changed = Some(Instant::now());
        }
    }
}

/// Writes orders straight to `<prefix>order_details` and times how long the pipeline takes
/// until `<prefix>analytics_result` counts them all.
///
/// First it writes one warm-up order every 200 ms until a result appears (the seed's
/// consumers read from the end and only once they are assigned, so orders written before
/// would be missed), waits for the count to stay put for a second, and takes that as the
/// starting point; then it writes the `orders` as fast as the producer goes.
pub async fn feed(
    kafka_settings: &KafkaSettings,
    orders: u64,
    price: Decimal,
    pacing: Pacing,
) -> anyhow::Result<FeedReport> {
    let topics = kafka_settings.topics();
    let order_details = topics.name(Topic::OrderDetails);
    let analytics_result = topics.name(Topic::AnalyticsResult);
    let consumer = crate::follow::consumer_at_end(kafka_settings, &analytics_result)?;
    let watcher = Follower::start(consumer, &analytics_result, |message, count: &mut Count| {
        count.observe(message);
    });
    let current = || watcher.with(|count| (count.value, count.changed));
    let producer = kafka::producer(kafka_settings, "loadgen-feed", DELIVERY_TIMEOUT)?;
    let run_id = format!("feed-{:08x}", rand::random::<u32>());
    let warmup_id = format!("{run_id}-warmup");

    let result = async {
        // Warm up until the pipeline answers.
        let deadline = Instant::now() + pacing.warmup();
        let mut warmup_orders = 0;
        while current().0.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no result on {analytics_result} within {:?} of warm-up orders to {order_details}",
                pacing.warmup()
            );
            warmup_orders += 1;
            let warmup = (warmup_id.as_str(), warmup_orders, 1);
            let failed = write_orders(
                &producer,
                &order_details,
                warmup,
                price,
                1,
                &AtomicU64::new(0),
            )
            .await;
            anyhow::ensure!(failed == 0, "writing a warm-up order to {order_details}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let the warm-up orders still in the pipeline arrive.
        loop {
            let (_, changed) = current();
            if changed.is_some_and(|c| c.elapsed() >= Duration::from_secs(1)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let count_before = current().0.unwrap_or(0);
        let target = count_before + orders;

        let started = Instant::now();
        let latest = watcher.watch();
        let counted = move || {
            let count = latest.with(|count| count.value.unwrap_or(0));
            count.saturating_sub(count_before)
        };
        let ((failed, write_seconds, reached), timeline) = steady::sampled(counted, async {
            let written = (run_id.as_str(), 1, orders);
            let acked = AtomicU64::new(0);
            let failed = write_orders(
                &producer,
                &order_details,
                written,
                price,
                pacing.in_flight,
                &acked,
            )
            .await;
            let write_seconds = started.elapsed().as_secs_f64();
            let deadline = Instant::now() + pacing.settle();
            let reached = loop {
                let (value, changed) = current();
                if value.is_some_and(|v| v >= target) {
                    break changed;
                }
                if Instant::now() >= deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            (failed, write_seconds, reached)
        })
        .await;
        // A little longer, so that a count beyond the target (duplicates) is seen too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let count_after = current().0.unwrap_or(0);
        let seconds = reached.map_or(started.elapsed(), |at| {
            at.saturating_duration_since(started)
        });
        let seconds = seconds.as_secs_f64().max(f64::EPSILON);
        let complete = failed == 0 && count_after == target;
        Ok(FeedReport {
            order_details: order_details.clone(),
            analytics_result: analytics_result.clone(),
            orders,
            failed,
            warmup_orders,
            count_before,
            count_after,
            write_seconds,
            rate: Rate::of(reached.map_or(0, |_| orders), seconds, &timeline),
            complete,
        })
    }
    .await;
    watcher.finish()?;
    result
}

/// The e-mail stage measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailStageReport {
    pub order_confirmed: String,
    pub order_email_sent: String,
    pub emails: u64,
    pub failed: u64,
    /// Warm-up decisions e-mailed before the clock started (one per SMTP connection).
    pub warmup: u64,
    /// Distinct measured orders seen on `order_email_sent`.
    pub seen: u64,
    /// From the first decision written to the last acknowledged.
    pub write_seconds: f64,
    /// E-mails per second through the stage, from the first decision written to the last
    /// of them on `order_email_sent` (`emails / seconds`; 0 unless complete).
    #[serde(flatten)]
    pub rate: Rate,
    /// Every decision got its `order_email_sent` record.
    pub complete: bool,
}

impl Measurement for EmailStageReport {
    fn rate(&self) -> &Rate {
        &self.rate
    }

    fn summary(&self) -> String {
        format!(
            "email stage: {} decisions to {} written in {:.2} s, all on {} after {:.2} s: {:.0} e-mails/s ({}); {} of {} seen ({})\n",
            self.emails,
            self.order_confirmed,
            self.write_seconds,
            self.order_email_sent,
            self.rate.seconds,
            self.rate.per_second,
            self.rate.describe_steady(),
            self.seen,
            self.emails,
            if self.complete {
                "complete"
            } else {
                "INCOMPLETE"
            }
        )
    }
}

/// Keys seen on a topic whose names start with a prefix, and when the last new one came.
#[derive(Debug, Default)]
struct Seen {
    keys: std::collections::HashSet<String>,
    last: Option<Instant>,
}

impl Seen {
    /// Notes the key of a message if it starts with `prefix` and is new.
    fn observe(&mut self, message: &BorrowedMessage<'_>, prefix: &str) {
        if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok())
            && key.starts_with(prefix)
            && self.keys.insert(key.to_owned())
        {
            self.last = Some(Instant::now());
        }
    }
}

/// Writes decided orders straight to `<prefix>order_confirmed` and times how long the email
/// service takes until every one of them is on `<prefix>order_email_sent`: the e-mail stage
/// on its own, without the load of the stages before it.
///
/// First `warmup` decisions go out and are waited for, so that the email service has its
/// SMTP connections open before the clock starts.
pub async fn email_stage(
    kafka_settings: &KafkaSettings,
    emails: u64,
    warmup: u64,
    pacing: Pacing,
) -> anyhow::Result<EmailStageReport> {
    let topics = kafka_settings.topics();
    let order_confirmed = topics.name(Topic::OrderConfirmed);
    let order_email_sent = topics.name(Topic::OrderEmailSent);
    let consumer = crate::follow::consumer_at_end(kafka_settings, &order_email_sent)?;
    let run_id = format!("mail-{:08x}", rand::random::<u32>());
    let prefix = run_id.clone();
    let watcher = Follower::start(
        consumer,
        &order_email_sent,
        move |message, seen: &mut Seen| {
            seen.observe(message, &prefix);
        },
    );
    let count = || watcher.with(|seen| (seen.keys.len() as u64, seen.last));
    let producer = kafka::producer(kafka_settings, "loadgen-email-stage", DELIVERY_TIMEOUT)?;
    let price: Decimal = Decimal::from(349);
    let decisions = |id: String, first: u64, n: u64| {
        (first..first + n).map(move |i| {
            let decision = decision(&id, i, price)?;
            Ok((
                decision.order.order_id.to_string(),
                serde_json::to_vec(&decision)?,
            ))
        })
    };

    let result = async {
        let failed = write_records(
            &producer,
            &order_confirmed,
            decisions(format!("{run_id}-warmup"), 1, warmup),
            pacing.in_flight,
            &AtomicU64::new(0),
        )
        .await;
        anyhow::ensure!(
            failed == 0,
            "writing the warm-up decisions to {order_confirmed}"
        );
        let deadline = Instant::now() + pacing.warmup();
        while count().0 < warmup {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the warm-up decisions were not all on {order_email_sent} within {:?}",
                pacing.warmup()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let measured = decisions(run_id.clone(), 1, emails);
        let target = warmup + emails;
        let started = Instant::now();
        let emailed = watcher.watch();
        let measured_emailed = move || {
            emailed
                .with(|seen| seen.keys.len() as u64)
                .saturating_sub(warmup)
        };
        let ((failed, write_seconds), timeline) = steady::sampled(measured_emailed, async {
            let acked = AtomicU64::new(0);
            let failed = write_records(
                &producer,
                &order_confirmed,
                measured,
                pacing.in_flight,
                &acked,
            )
            .await;
            let write_seconds = started.elapsed().as_secs_f64();
            let deadline = Instant::now() + pacing.settle();
            while count().0 < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (failed, write_seconds)
        })
        .await;
        let (total, last) = count();
        let complete = failed == 0 && total == target;
        let seconds = last
            .filter(|_| complete)
            .map_or(started.elapsed(), |at| {
                at.saturating_duration_since(started)
            })
            .as_secs_f64()
            .max(f64::EPSILON);
        Ok(EmailStageReport {
            order_confirmed: order_confirmed.clone(),
            order_email_sent: order_email_sent.clone(),
            emails,
            failed,
            warmup,
            seen: total.saturating_sub(warmup),
            write_seconds,
            rate: Rate::of(if complete { emails } else { 0 }, seconds, &timeline),
            complete,
        })
    }
    .await;
    watcher.finish()?;
    result
}

/// Creates `names` (after the topic prefix) with the configured partitions and replication
/// factor, plain: the seed writes its records without a key, which a compacted topic (as
/// the services make `analytics_result`) refuses. Existing ones are left alone.
pub async fn create_topics(kafka_settings: &KafkaSettings, names: &[String]) -> anyhow::Result<()> {
    let names: Vec<String> = names
        .iter()
        .map(|name| format!("{}{name}", kafka_settings.topic_prefix))
        .collect();
    kafka::ensure_plain_topics(kafka_settings, &names).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_record_is_an_accepted_order_as_the_orders_service_writes_it() {
        let bytes = order_record("raw-1", 1, "19.99".parse().unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["order_id"], "raw-1");
        assert_eq!(value["order_details"]["price"], serde_json::json!(19.99));
        assert_eq!(value["schema"], serde_json::json!(SCHEMA_VERSION));
        assert!(value["time"].as_f64().unwrap() > 0.0);
        let _: Order = serde_json::from_slice(&bytes).unwrap();
    }

    #[test]
    fn the_smtp_decision_is_a_confirmation_the_email_templates_render() {
        let decision = decision("smtp-1", 7, "349".parse().unwrap()).unwrap();
        assert_eq!(decision.order.order_id.to_string(), "smtp-1-7");
        let rendered = email::templates::render(&decision).unwrap();
        assert!(
            rendered.subject.contains("smtp-1-7"),
            "{}",
            rendered.subject
        );
    }

    #[test]
    fn a_report_writes_its_rate_at_the_top_level_of_its_json_beside_its_probe() {
        // bench/report.py reads `per_second`, `seconds` and `steady` of every step's JSON.
        let report = ProduceReport {
            topic: "order_details".into(),
            messages: 1_000,
            failed: 0,
            message_bytes: 200,
            in_flight: 100,
            rate: Rate {
                seconds: 2.0,
                per_second: 500.0,
                steady: None,
            },
            megabytes_per_second: 0.1,
        };
        let sized = steady::Sized {
            report,
            probe: None,
        };
        let json = serde_json::to_value(&sized).unwrap();
        assert_eq!(json["seconds"], serde_json::json!(2.0));
        assert_eq!(json["per_second"], serde_json::json!(500.0));
        assert_eq!(json["steady"], serde_json::Value::Null);
        assert_eq!(json["messages"], serde_json::json!(1_000));
        assert_eq!(json.get("rate"), None);
    }

    #[test]
    fn the_seed_reads_the_feed_price_with_int() {
        // The seed's analytics does int(order_details['price']): a whole number is needed.
        let bytes = order_record("feed-1", 1, "349".parse().unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["order_details"]["price"], serde_json::json!(349));
    }
}
