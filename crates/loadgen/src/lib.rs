//! flatpack's load generator: posts orders to the orders API, at a fixed rate or as fast as
//! `concurrency` keep-alive connections allow, and follows each accepted order through
//! `order_confirmed` and `order_email_sent` (and the totals through `analytics_result`).
//!
//! It reports throughput, the POST latency and the time from POST to each downstream event
//! (p50/p90/p99/max), the errors, and whether anything was lost or duplicated: every accepted
//! order must reach every followed topic exactly once, and the analytics totals must grow by
//! exactly what was posted.

pub mod bench;
pub mod copy;
mod follow;
pub mod steady;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{KafkaSettings, Topic};
use futures::StreamExt;
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde::Serialize;

use analytics::totals::Totals;

use crate::follow::{Seen, follow};
use crate::steady::{Measurement, Rate};

/// A downstream topic the orders are followed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Downstream {
    OrderConfirmed,
    OrderEmailSent,
    AnalyticsResult,
}

impl Downstream {
    fn topic(self) -> Topic {
        match self {
            Downstream::OrderConfirmed => Topic::OrderConfirmed,
            Downstream::OrderEmailSent => Topic::OrderEmailSent,
            Downstream::AnalyticsResult => Topic::AnalyticsResult,
        }
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of the orders API (`http://127.0.0.1:5002`).
    pub url: String,
    /// How many orders to post.
    pub orders: u64,
    /// Orders per second; `None` posts as fast as the connections allow.
    pub rate: Option<f64>,
    /// Requests in flight (keep-alive connections).
    pub concurrency: usize,
    /// The price of every order (a decimal string).
    pub price: Decimal,
    /// Topics to follow the orders to.
    pub follow: Vec<Downstream>,
    /// How long to wait, after the last POST, for the orders to arrive downstream.
    pub settle_timeout: Duration,
    /// Makes this run's order ids unique: `<run_id>-<n>`.
    pub run_id: String,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// What became of the accepted orders on one followed topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: Downstream,
    /// Accepted orders seen on the topic.
    pub seen: u64,
    /// Accepted orders never seen on the topic (their ids).
    pub lost: Vec<String>,
    /// Accepted orders seen more than once.
    pub duplicated: Vec<String>,
    /// From the POST to the order's first appearance on the topic.
    pub latency: Latency,
}

/// Whether the analytics totals grew by exactly what was posted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyticsCheck {
    pub expected_revenue_increase: Decimal,
    pub observed_revenue_increase: Decimal,
    pub expected_orders_increase: u64,
    pub observed_orders_increase: u64,
    pub exact: bool,
}

/// The outcome of a run: the JSON the generator writes, and what its summary says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub run_id: String,
    pub posted: u64,
    pub accepted: u64,
    /// Failed POSTs by status code (or `"connection"`).
    pub errors: BTreeMap<String, u64>,
    /// Accepted orders per second, from the first POST to the last answer.
    #[serde(flatten)]
    pub rate: Rate,
    pub post_latency: Latency,
    pub stages: Vec<StageReport>,
    pub analytics: Option<AnalyticsCheck>,
}

impl Report {
    /// Nothing lost, nothing duplicated, totals exact, no failed POST.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
            && self
                .stages
                .iter()
                .all(|s| s.lost.is_empty() && s.duplicated.is_empty())
            && self.analytics.as_ref().is_none_or(|a| a.exact)
    }
}

impl Measurement for Report {
    fn rate(&self) -> &Rate {
        &self.rate
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "run {}: {} posted, {} accepted in {:.2} s: {:.0} orders/s ({})\n",
            self.run_id,
            self.posted,
            self.accepted,
            self.rate.seconds,
            self.rate.per_second,
            self.rate.describe_steady()
        );
        let line = |name: &str, l: &Latency| {
            format!(
                "  {name:<22} p50 {:>8.2} ms  p90 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  (n={})\n",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            )
        };
        text += &line("POST /order", &self.post_latency);
        for stage in &self.stages {
            text += &line(&format!("POST → {:?}", stage.stage), &stage.latency);
            if !stage.lost.is_empty() || !stage.duplicated.is_empty() {
                text += &format!(
                    "  {:?}: LOST {} (e.g. {:?}), DUPLICATED {}\n",
                    stage.stage,
                    stage.lost.len(),
                    stage.lost.iter().take(5).collect::<Vec<_>>(),
                    stage.duplicated.len()
                );
            }
        }
        for (error, count) in &self.errors {
            text += &format!("  errors {error}: {count}\n");
        }
        if let Some(a) = &self.analytics {
            text += &format!(
                "  analytics: revenue +{} (expected +{}), orders +{} (expected +{}): {}\n",
                a.observed_revenue_increase,
                a.expected_revenue_increase,
                a.observed_orders_increase,
                a.expected_orders_increase,
                if a.exact { "exact" } else { "MISMATCH" }
            );
        }
        text += if self.is_clean() {
            "  nothing lost, nothing duplicated\n"
        } else {
            "  NOT CLEAN\n"
        };
        text
    }
}

/// Posts the orders, follows them, and reports.
pub async fn run(config: &Config, kafka: &KafkaSettings) -> anyhow::Result<Report> {
    let topics = kafka.topics();
    // The totals before the run: the analytics follower only sees results written after it
    // starts, so the starting point comes from the compacted topic itself.
    let analytics_before = if config.follow.contains(&Downstream::AnalyticsResult) {
        let kafka = kafka.clone();
        let topic = topics.name(Topic::AnalyticsResult);
        Some(tokio::task::spawn_blocking(move || analytics::read_totals(&kafka, &topic)).await??)
    } else {
        None
    };
    let mut followers = Vec::new();
    for stage in &config.follow {
        let follower = follow(
            kafka,
            &topics.name(stage.topic()),
            *stage == Downstream::AnalyticsResult,
        )?;
        followers.push((*stage, follower));
    }

    let answered = Arc::new(AtomicU64::new(0));
    let counted = answered.clone();
    let (posting, timeline) = steady::sampled(
        move || counted.load(Ordering::Relaxed),
        post(config, &answered),
    )
    .await;
    let posting = posting?;
    let accepted: Vec<&String> = posting.sent.keys().collect();

    // Wait until every accepted order arrived everywhere, or the settle time is up.
    let deadline = Instant::now() + config.settle_timeout;
    let expected_seq_increase = posting.sent.len() as u64;
    loop {
        let done = followers.iter().all(|(stage, follower)| {
            follower.with(|seen| match stage {
                Downstream::AnalyticsResult => {
                    let before = analytics_before.as_ref().map_or(0, |t| t.seq);
                    seen.latest_result
                        .as_ref()
                        .is_some_and(|r| r.seq >= before + expected_seq_increase)
                }
                _ => accepted.iter().all(|id| seen.orders.contains_key(*id)),
            })
        });
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer, so that duplicates right behind the last order are seen too.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut stages = Vec::new();
    let mut analytics = None;
    for (stage, follower) in followers {
        let seen = tokio::task::spawn_blocking(move || follower.finish()).await??;
        if stage == Downstream::AnalyticsResult {
            analytics = Some(check_totals(
                analytics_before.as_ref(),
                &seen,
                config.price,
                posting.sent.len() as u64,
            ));
        } else {
            stages.push(stage_report(stage, &posting.sent, &seen)?);
        }
    }

    let accepted = posting.sent.len() as u64;
    Ok(Report {
        run_id: config.run_id.clone(),
        posted: config.orders,
        accepted,
        errors: posting.errors,
        rate: Rate::of(accepted, posting.elapsed.as_secs_f64(), &timeline),
        post_latency: Latency::of(&posting.latency),
        stages,
        analytics,
    })
}

/// What posting produced.
struct Posting {
    /// Accepted order id → when its POST was sent.
    sent: HashMap<String, Instant>,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    elapsed: Duration,
}

/// Posts the orders; counts the accepted ones in `accepted` as they are answered.
async fn post(config: &Config, accepted: &AtomicU64) -> anyhow::Result<Posting> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{}/order", config.url.trim_end_matches('/'));
    let state = Arc::new(Mutex::new(Posting {
        sent: HashMap::with_capacity(usize::try_from(config.orders).unwrap_or(0)),
        errors: BTreeMap::new(),
        latency: Histogram::new(3)?,
        elapsed: Duration::ZERO,
    }));

    // Order numbers come out of a channel, paced when a rate is set.
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(config.concurrency.max(1) * 2);
    let orders = config.orders;
    let rate = config.rate;
    let pacer = tokio::spawn(async move {
        let mut interval = rate.map(|r| {
            let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            i
        });
        for n in 1..=orders {
            if let Some(interval) = interval.as_mut() {
                interval.tick().await;
            }
            if tx.send(n).await.is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let numbers = futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|n| (n, rx)) });
    numbers
        .for_each_concurrent(config.concurrency.max(1), |n| {
            let (client, url, state) = (client.clone(), url.clone(), state.clone());
            async move {
                let id = format!("{}-{n}", config.run_id);
                let body = order(&id, n, config.price);
                let sent = Instant::now();
                let outcome = client.post(&url).json(&body).send().await;
                let took = sent.elapsed();
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                match outcome {
                    Ok(response) if response.status().is_success() => {
                        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                        let _ = state.latency.record(micros.max(1));
                        state.sent.insert(id, sent);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        *state
                            .errors
                            .entry(response.status().as_u16().to_string())
                            .or_default() += 1;
                    }
                    Err(_) => *state.errors.entry("connection".into()).or_default() += 1,
                }
            }
        })
        .await;
    pacer.await?;
    let mut posting = Arc::try_unwrap(state)
        .map_err(|_| anyhow::anyhow!("posting still in use"))?
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    posting.elapsed = started.elapsed();
    Ok(posting)
}

/// The request body of order number `n`: always confirmable (below the payment limit).
fn order(id: &str, n: u64, price: Decimal) -> serde_json::Value {
    serde_json::json!({
        "user_id": n,
        "order_id": id,
        "user_email": format!("load+{n}@example.com"),
        "order_details": { "price": price.to_string(), "item": "LACK side table" },
    })
}

/// Compares what was sent with what `seen` holds for one topic.
fn stage_report(
    stage: Downstream,
    sent: &HashMap<String, Instant>,
    seen: &Seen,
) -> anyhow::Result<StageReport> {
    let mut latency = Histogram::<u64>::new(3)?;
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    for (id, sent_at) in sent {
        match seen.orders.get(id) {
            Some((arrived, count)) => {
                let micros = u64::try_from(arrived.saturating_duration_since(*sent_at).as_micros())
                    .unwrap_or(u64::MAX);
                let _ = latency.record(micros.max(1));
                if *count > 1 {
                    duplicated.push(id.clone());
                }
            }
            None => lost.push(id.clone()),
        }
    }
    lost.sort();
    duplicated.sort();
    Ok(StageReport {
        stage,
        seen: sent.len() as u64 - lost.len() as u64,
        lost,
        duplicated,
        latency: Latency::of(&latency),
    })
}

/// Compares the newest totals seen with the totals before the run plus what was accepted.
fn check_totals(
    before: Option<&Totals>,
    seen: &Seen,
    price: Decimal,
    accepted: u64,
) -> AnalyticsCheck {
    let (revenue_before, orders_before) =
        before.map_or((Decimal::ZERO, 0), |b| (b.revenue, b.orders));
    let (revenue_after, orders_after) = seen
        .latest_result
        .as_ref()
        .map_or((revenue_before, orders_before), |r| {
            (r.total_revenue_exact, r.total_orders_count)
        });
    let expected_revenue_increase = price * Decimal::from(accepted);
    let observed_revenue_increase = revenue_after - revenue_before;
    let observed_orders_increase = orders_after.saturating_sub(orders_before);
    AnalyticsCheck {
        exact: observed_revenue_increase == expected_revenue_increase
            && observed_orders_increase == accepted,
        expected_revenue_increase,
        observed_revenue_increase,
        expected_orders_increase: accepted,
        observed_orders_increase,
    }
}
