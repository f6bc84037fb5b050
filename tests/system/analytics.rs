//! The analytics service: exact totals, through crashes and with two instances.

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::COMPACTED_TOPIC_CONFIG;
use common::{AnalyticsResult, Topic};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::{
    Record, ServiceProcess, TestEnv, free_addr, order_body, post_all, scrape_until,
    spawn_analytics, spawn_orders, spawn_transactions,
};
use crate::test_env;

/// Orders `1..=count` with varied prices; every seventh is declined by its payment token.
fn orders(count: u64) -> Vec<Value> {
    (1..=count)
        .map(|id| {
            let price = format!("{}.{:02}", id % 500, id % 100);
            let mut body = order_body(id, &price);
            if id % 7 == 0 {
                body["order_details"]["payment_token"] = json!("tok_declined");
            }
            body
        })
        .collect()
}

/// (exact revenue of the confirmed orders, confirmed count, declined count) of `orders`.
fn expected(orders: &[Value]) -> (Decimal, u64, u64) {
    let mut revenue = Decimal::ZERO;
    let (mut confirmed, mut declined) = (0, 0);
    for order in orders {
        if order["order_details"]["payment_token"] == json!("tok_declined") {
            declined += 1;
        } else {
            revenue += order["order_details"]["price"]
                .to_string()
                .parse::<Decimal>()
                .unwrap();
            confirmed += 1;
        }
    }
    (revenue, confirmed, declined)
}

fn results(records: &[Record]) -> Vec<AnalyticsResult> {
    records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect()
}

/// Reads `analytics_result` until the result of the `decisions`-th decision is in; returns
/// all results.
fn read_results(env: &TestEnv, decisions: u64) -> Vec<AnalyticsResult> {
    let mut reader = env.reader(&env.topic(Topic::AnalyticsResult));
    let records = reader
        .read_until(
            &format!("the result of decision {decisions}"),
            Duration::from_secs(180),
            |records| results(records).iter().any(|r| r.seq >= decisions),
        )
        .to_vec();
    results(&records)
}

/// The newest result must hold exactly the expected totals, and every decision must have
/// been counted once: one result per sequence number, none missing, none twice.
fn assert_exact(results: &[AnalyticsResult], orders: &[Value]) {
    let (revenue, confirmed, declined) = expected(orders);
    let count = orders.len() as u64;
    let mut seqs: Vec<u64> = results.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<_>>(),
        "one result per decision"
    );
    let last = results.iter().max_by_key(|r| r.seq).unwrap();
    assert_eq!(last.total_revenue_exact, revenue);
    assert_eq!(last.total_revenue, revenue);
    assert_eq!(last.total_orders_count, confirmed);
    assert_eq!(last.total_declined_count, declined);
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_are_the_exact_sum_of_confirmed_prices_with_declines_counted_apart() {
    let env = test_env!();
    create_pipeline_topics(&env).await;
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "a");
    let analytics = spawn_analytics(&env);

    let bodies = orders(120);
    let statuses = post_all(&api.url, bodies.clone(), 8).await;
    assert!(statuses.iter().all(|s| *s == 200));

    let env2 = env.clone();
    let all = tokio::task::spawn_blocking(move || read_results(&env2, 120))
        .await
        .unwrap();
    assert_exact(&all, &bodies);
    let last = all.iter().max_by_key(|r| r.seq).unwrap();
    // Every order was placed today: the day's figures are the totals.
    assert_eq!(
        last.day,
        common::events::utc_day(common::events::now_epoch_seconds())
    );
    assert_eq!(last.day_revenue, last.total_revenue_exact);
    assert_eq!(last.day_orders_count, last.total_orders_count);
    assert_eq!(last.day_declined_count, last.total_declined_count);

    // The wire carries the seed's fields as numbers.
    let mut reader = env.reader(&env.topic(Topic::AnalyticsResult));
    let raw = reader.read_at_least(1, Duration::from_secs(30))[0].json();
    assert!(raw["total_revenue"].is_number() && raw["total_orders_count"].is_u64());

    // analytics_result and the changelog analytics created keep one record per key, in
    // segments small enough to be compacted long before a million results.
    let compacted: BTreeMap<String, String> = COMPACTED_TOPIC_CONFIG
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    assert_eq!(compacted["segment.bytes"], "16777216");
    for topic in [
        env.topic(Topic::AnalyticsResult),
        env.kafka.topics().changelog("analytics-counted"),
    ] {
        assert_eq!(env.topic_overrides(&topic).await, compacted, "{topic}");
    }
    let plain = env.topic_overrides(&env.topic(Topic::OrderConfirmed)).await;
    assert_eq!(plain, BTreeMap::new());

    analytics.stop().await.unwrap();
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Creates the topics up front, so that readers can open them before the services start.
async fn create_pipeline_topics(env: &TestEnv) {
    env.create_topics(&[
        env.topic(Topic::OrderDetails),
        env.topic(Topic::OrderConfirmed),
        env.topic(Topic::AnalyticsResult),
    ])
    .await;
}

fn analytics_vars(env: &TestEnv) -> Vec<(String, String)> {
    let mut vars = env.service_vars();
    vars.push(("ANALYTICS_MAX_BATCH".into(), "20".into()));
    vars.push(("ANALYTICS_TAKEOVER_AFTER_MS".into(), "2000".into()));
    vars
}

fn wait_for_results(env: &TestEnv, count: usize) {
    env.reader(&env.topic(Topic::AnalyticsResult))
        .wait_for(count, Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_the_middle_of_a_stream_and_a_restart_keep_the_totals_exact() {
    let env = test_env!();
    create_pipeline_topics(&env).await;
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "a");
    let vars = analytics_vars(&env);
    let mut analytics = ServiceProcess::start("analytics", &vars);

    let bodies = orders(1000);
    let url = api.url.clone();
    let posting = {
        let bodies = bodies.clone();
        tokio::spawn(async move { post_all(&url, bodies, 16).await })
    };
    for round in 1..=2 {
        let env2 = env.clone();
        tokio::task::spawn_blocking(move || wait_for_results(&env2, 250 * round))
            .await
            .unwrap();
        assert!(analytics.is_running(), "analytics died on its own");
        analytics.kill();
        analytics = ServiceProcess::start("analytics", &vars);
    }
    assert!(posting.await.unwrap().iter().all(|s| *s == 200));

    let env2 = env.clone();
    let all = tokio::task::spawn_blocking(move || read_results(&env2, 1000))
        .await
        .unwrap();
    assert_exact(&all, &bodies);

    assert!(analytics.terminate(Duration::from_secs(30)).success());
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_during_a_stream_keep_the_totals_exact_and_one_takes_over() {
    let env = test_env!();
    create_pipeline_topics(&env).await;
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "a");
    let vars = analytics_vars(&env);
    let mut first = ServiceProcess::start("analytics", &vars);

    let bodies = orders(800);
    let url = api.url.clone();
    let posting = {
        let bodies = bodies.clone();
        tokio::spawn(async move { post_all(&url, bodies, 16).await })
    };
    let env2 = env.clone();
    tokio::task::spawn_blocking(move || wait_for_results(&env2, 150))
        .await
        .unwrap();
    // A second instance joins mid-stream (it takes over; the first stands by) ...
    let second = ServiceProcess::start("analytics", &vars);
    let env2 = env.clone();
    tokio::task::spawn_blocking(move || wait_for_results(&env2, 400))
        .await
        .unwrap();
    // ... and dies mid-stream: the first must notice and finish the count.
    second.kill();
    assert!(posting.await.unwrap().iter().all(|s| *s == 200));

    let env2 = env.clone();
    let all = tokio::task::spawn_blocking(move || read_results(&env2, 800))
        .await
        .unwrap();
    assert_exact(&all, &bodies);
    assert!(first.is_running());

    assert!(first.terminate(Duration::from_secs(30)).success());
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// A decision on order `id` at price 10, as transactions writes it: confirmed, or declined
/// for the orders this test uses as markers.
fn decision(id: u64, confirmed: bool) -> Vec<u8> {
    let status = if confirmed { "confirmed" } else { "declined" };
    json!({"user_id": 7, "order_id": id, "user_email": "buyer@example.com",
        "order_details": {"price": 10}, "time": 1_700_000_000.5, "status": status})
    .to_string()
    .into_bytes()
}

/// Writes confirmed decisions `(key, order id)` to `order_confirmed` in this order, then
/// after each copy a declined marker `(key, order id)` on the same key: in the copy's
/// partition, after it.
async fn produce_decisions(env: &TestEnv, confirmed: &[(&str, u64)], markers: &[(&str, u64)]) {
    let topic = env.topic(Topic::OrderConfirmed);
    for (key, id) in confirmed {
        env.produce(&topic, key, &decision(*id, true)).await;
    }
    for (key, id) in markers {
        env.produce(&topic, key, &decision(*id, false)).await;
    }
}

/// The newest result once `declined` markers were counted: by then every decision written
/// before them in their partitions was read.
fn result_after_markers(env: &TestEnv, declined: u64) -> AnalyticsResult {
    let mut reader = env.reader(&env.topic(Topic::AnalyticsResult));
    let records = reader
        .read_until(
            &format!("a result counting {declined} declined orders"),
            Duration::from_secs(120),
            |records| {
                results(records)
                    .iter()
                    .any(|r| r.total_declined_count >= declined)
            },
        )
        .to_vec();
    results(&records).into_iter().max_by_key(|r| r.seq).unwrap()
}

/// Asserts that once the declined markers are counted, the newest result counts
/// `(decisions, confirmed, declined)`; returns it.
async fn assert_counted_after_markers(env: &TestEnv, expected: (u64, u64, u64)) -> AnalyticsResult {
    let env2 = env.clone();
    let last = tokio::task::spawn_blocking(move || result_after_markers(&env2, expected.2))
        .await
        .unwrap();
    assert_eq!(
        (last.seq, last.total_orders_count, last.total_declined_count),
        expected,
        "each order counted once: {last:?}"
    );
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decision_counted_before_is_never_counted_again_whatever_its_partition_and_after_a_restart()
 {
    let env = test_env!();
    create_pipeline_topics(&env).await;
    let store_dir = std::env::temp_dir().join(format!("{}analytics-state", env.prefix));
    let mut vars = analytics_vars(&env);
    vars.push(("FLATPACK_STORE_DIR".into(), store_dir.display().to_string()));
    let analytics = ServiceProcess::start("analytics", &vars);

    let keys: Vec<String> = (1..=10).map(|id| id.to_string()).collect();
    let firsts: Vec<(&str, u64)> = keys
        .iter()
        .zip(1..)
        .map(|(k, id)| (k.as_str(), id))
        .collect();
    produce_decisions(&env, &firsts, &[]).await;
    // Copies: order 3 again under its key, order 4 under another key (so most likely in
    // another partition).
    produce_decisions(
        &env,
        &[("3", 3), ("elsewhere", 4)],
        &[("3", 11), ("elsewhere", 12)],
    )
    .await;
    assert_counted_after_markers(&env, (12, 10, 2)).await;

    // After a crash, the orders counted are known still.
    analytics.kill();
    let analytics = ServiceProcess::start("analytics", &vars);
    produce_decisions(&env, &[("5", 5), ("again", 6)], &[("5", 13), ("again", 14)]).await;
    let last = assert_counted_after_markers(&env, (14, 10, 4)).await;
    assert_eq!(last.total_revenue_exact, Decimal::from(100));

    // After a clean stop, the totals come from the on-disk copy of the results: not one
    // result is read again, and the totals go on from where they were.
    let status = analytics.terminate(Duration::from_secs(30));
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    let ops_addr = free_addr();
    vars.push(("ANALYTICS_OPS_ADDR".into(), ops_addr.clone()));
    let analytics = ServiceProcess::start("analytics", &vars);
    produce_decisions(&env, &[("15", 15)], &[("16", 16)]).await;
    let last = assert_counted_after_markers(&env, (16, 11, 5)).await;
    assert_eq!(last.total_revenue_exact, Decimal::from(110));
    let results = env.topic(Topic::AnalyticsResult);
    let restored = format!("flatpack_state_restored_total{{changelog=\"{results}\"}} 0");
    scrape_until(
        &format!("http://{ops_addr}/metrics"),
        Duration::from_secs(30),
        |text| text.lines().any(|line| line == restored),
    )
    .await;

    let status = analytics.terminate(Duration::from_secs(30));
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&store_dir);
    env.cleanup().await;
}
