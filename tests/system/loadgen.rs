//! The load generator's own checks: it must notice a lost or duplicated order.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use common::Topic;
use loadgen::bench::Pacing;
use loadgen::steady::{self, Measurement, Sizing};
use loadgen::{Config, Downstream};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::helpers::{TestEnv, spawn_analytics, spawn_email, spawn_orders, spawn_transactions};
use crate::test_env;

fn config(url: String, orders: u64, follow: Vec<Downstream>) -> Config {
    Config {
        url,
        orders,
        rate: None,
        concurrency: 8,
        price: "19.99".parse().unwrap(),
        follow,
        settle_timeout: Duration::from_secs(10),
        run_id: format!("run{:08x}", rand::random::<u32>()),
    }
}

/// A faulty "orders + transactions": accepts every order, but never decides every fifth
/// and decides order 7 twice.
async fn faulty_pipeline(env: &TestEnv) -> String {
    let topic = env.topic(Topic::OrderConfirmed);
    env.create_topics(std::slice::from_ref(&topic)).await;
    let producer = env.producer();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    async fn accept(
        State((producer, topic)): State<(FutureProducer, String)>,
        Json(order): Json<serde_json::Value>,
    ) -> Json<serde_json::Value> {
        let n = order["user_id"].as_u64().unwrap();
        let id = order["order_id"].as_str().unwrap().to_owned();
        let copies = match n {
            _ if n % 5 == 0 => 0,
            7 => 2,
            _ => 1,
        };
        for _ in 0..copies {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&id)
                        .payload(&order.to_string()),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        Json(order)
    }
    let app = axum::Router::new()
        .route("/order", axum::routing::post(accept))
        .with_state((producer, topic));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_reports_every_lost_and_duplicated_order() {
    let env = test_env!();
    let url = faulty_pipeline(&env).await;
    let config = config(url, 20, vec![Downstream::OrderConfirmed]);

    let report = loadgen::run(&config, &env.kafka).await.unwrap();

    assert_eq!(report.accepted, 20);
    let stage = &report.stages[0];
    let id = |n: u64| format!("{}-{n}", config.run_id);
    let mut lost: Vec<String> = [5, 10, 15, 20].into_iter().map(id).collect();
    lost.sort();
    assert_eq!(stage.lost, lost);
    assert_eq!(stage.duplicated, vec![id(7)]);
    assert_eq!(stage.seen, 16);
    assert!(!report.is_clean());
    assert!(report.summary().contains("LOST 4"), "{}", report.summary());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_finds_a_healthy_pipeline_clean_with_exact_totals() {
    let env = test_env!();
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "a");
    let analytics = spawn_analytics(&env);
    // Analytics creates its topic at start; wait for it before following it.
    env.create_topics(&[
        env.topic(Topic::AnalyticsResult),
        env.topic(Topic::OrderConfirmed),
    ])
    .await;
    let config = config(
        api.url.clone(),
        200,
        vec![Downstream::OrderConfirmed, Downstream::AnalyticsResult],
    );

    let report = loadgen::run(&config, &env.kafka).await.unwrap();

    assert!(report.is_clean(), "{}", report.summary());
    assert_eq!(report.accepted, 200);
    assert_eq!(report.stages[0].seen, 200);
    assert_eq!(report.post_latency.count, 200);
    let analytics_check = report.analytics.as_ref().unwrap();
    assert!(analytics_check.exact);
    assert_eq!(
        analytics_check.observed_revenue_increase,
        "3998".parse().unwrap()
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["stages"][0]["stage"], "order_confirmed");

    analytics.stop().await.unwrap();
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn email_stage_times_every_decision_to_its_record_and_fails_without_an_email_service() {
    let env = test_env!();
    let Some(mailpit) = crate::helpers::mailpit::mailpit() else {
        return;
    };
    env.create_topics(&[
        env.topic(Topic::OrderConfirmed),
        env.topic(Topic::OrderEmailSent),
    ])
    .await;

    // Nobody e-mails: the warm-up never completes and the measurement says so.
    let pacing = |seconds| Pacing {
        in_flight: 100,
        warmup_seconds: seconds,
        settle_seconds: seconds,
    };
    let none = loadgen::bench::email_stage(&env.kafka, 10, 4, pacing(3)).await;
    assert!(none.is_err(), "{none:?}");

    let email = spawn_email(&env, mailpit.smtp_vars());
    let report = loadgen::bench::email_stage(&env.kafka, 50, 8, pacing(60))
        .await
        .unwrap();

    assert!(report.complete, "{}", report.summary());
    assert_eq!(report.seen, 50);
    assert_eq!(report.failed, 0);
    assert!(report.rate.per_second > 0.0, "{}", report.summary());
    assert!(report.summary().contains("50 of 50 seen (complete)"));
    email.stop().await.unwrap();
    env.cleanup().await;
}

/// `loadgen topics` (the benchmark's seed topics) makes plain topics: the seed writes its
/// records without a key, which a compacted topic, as the services make `analytics_result`,
/// refuses.
#[tokio::test(flavor = "multi_thread")]
async fn loadgen_topics_are_plain_so_the_seeds_unkeyed_records_are_accepted() {
    let env = test_env!();
    loadgen::bench::create_topics(&env.kafka, &["analytics_result".to_string()])
        .await
        .unwrap();
    let topic = env.topic(Topic::AnalyticsResult);
    let delivered = env
        .producer()
        .send(
            FutureRecord::<(), _>::to(&topic).payload(br#"{"total_orders_count": 1}"#),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        delivered.is_ok(),
        "an unkeyed record was refused: {delivered:?}"
    );
    env.cleanup().await;
}

/// The benchmark's raw exactly-once copy loop copies every record once, in transactions of
/// at most `max_batch`, and says so.
#[tokio::test(flavor = "multi_thread")]
async fn eos_copy_copies_every_record_once_in_transactions_of_at_most_max_batch() {
    let env = test_env!();
    let report = loadgen::copy::eos_copy(
        &env.kafka,
        1_200,
        500,
        "19.99".parse().unwrap(),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert!(report.complete, "{}", report.summary());
    // The orders and the producer's warm-up record.
    assert_eq!(
        (report.messages, report.copied),
        (1_201, 1_201),
        "{}",
        report.summary()
    );
    assert!(report.transactions >= 3, "{}", report.summary());

    let mut reader = env.reader(&report.destination);
    let records = reader
        .read_at_least(1_201, Duration::from_secs(60))
        .to_vec();
    let keys: std::collections::HashSet<_> = records.iter().map(|r| r.key.clone()).collect();
    assert_eq!((records.len(), keys.len()), (1_201, 1_201));
    env.cleanup().await;
}

/// With `--steady-seconds`, a measurement is sized by a probe and reports its rate over the
/// middle 80 % of what it did: the benchmark's steady window, against a real broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_steady_run_is_sized_by_its_probe_and_reports_the_rate_over_its_middle() {
    let env = test_env!();
    let sizing = Sizing {
        steady_seconds: Some(2),
    };
    let price = "19.99".parse().unwrap();
    let sized = steady::sized(sizing, 1, |messages| {
        loadgen::bench::produce(&env.kafka, messages, 10_000, price)
    })
    .await
    .unwrap();
    let (report, probe) = (&sized.report, sized.probe.as_ref().unwrap());
    assert_eq!(report.failed, 0, "{}", report.summary());
    // The probe ran 1,000 messages, then four times more each time until one lasted 2 s.
    assert!(
        [1_000, 5_000, 21_000, 85_000, 341_000, 1_365_000].contains(&probe.items),
        "{probe:?}"
    );
    // Two steady seconds at the probe's rate, the 20 % around them and a quarter more, in
    // thousands.
    let expected = (probe.per_second * 2.0 * 1.25 / 0.8 / 1000.0).ceil() as u64 * 1000;
    assert_eq!((probe.sized, report.messages), (expected, expected));
    let steady = report.rate.steady.as_ref().expect("a steady window");
    let share = steady.items as f64 / report.messages as f64;
    assert!(
        (0.7..=0.9).contains(&share),
        "{steady:?} of {}",
        report.messages
    );
    assert!(steady.to_seconds > steady.from_seconds, "{steady:?}");
    assert!(
        steady.to_seconds <= report.rate.seconds + 0.1,
        "{steady:?} in {} s",
        report.rate.seconds
    );
}
