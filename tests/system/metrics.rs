//! What an operator scrapes: every service's `/metrics`, and the health and readiness of the
//! services without an HTTP API of their own.

use std::time::Duration;

use common::Topic;
use serde_json::json;

use crate::helpers::{
    ServiceProcess, free_addr, get, order_body, post_all, scrape_until, spawn_orders,
    spawn_transactions,
};
use crate::test_env;

/// The value of the series `name{labels}` (labels exactly as rendered) in Prometheus text,
/// or `None` when the series is absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Starts transactions as a process with `vars`, as instance `instance`, its ops server on a
/// free port; waits until that answers `/healthz`. Returns it and the ops server's URL.
async fn transactions_with_ops(
    mut vars: Vec<(String, String)>,
    instance: &str,
) -> (ServiceProcess, String) {
    let ops_addr = free_addr();
    vars.push(("TRANSACTIONS_INSTANCE_ID".into(), instance.into()));
    vars.push(("TRANSACTIONS_OPS_ADDR".into(), ops_addr.clone()));
    let transactions = ServiceProcess::start("transactions", &vars);
    let ops_url = format!("http://{ops_addr}");
    scrape_until(
        &format!("{ops_url}/healthz"),
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    (transactions, ops_url)
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_and_transactions_count_requests_outcomes_and_decisions_exactly() {
    let env = test_env!();
    let orders_addr = free_addr();
    let mut orders_vars = env.service_vars();
    orders_vars.push(("ORDERS_HTTP_ADDR".into(), orders_addr.clone()));
    let orders = ServiceProcess::start("orders", &orders_vars);
    let (transactions, ops_url) = transactions_with_ops(env.service_vars(), "metrics").await;

    let orders_url = format!("http://{orders_addr}");
    scrape_until(
        &format!("{orders_url}/readyz"),
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    scrape_until(
        &format!("{ops_url}/readyz"),
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    assert_eq!(get(&format!("{ops_url}/healthz")).await.0, 200);

    // Nine orders, one of them declined, and one invalid request.
    let mut bodies: Vec<_> = (1..=9).map(|id| order_body(id, "20.00")).collect();
    bodies[4]["order_details"]["payment_token"] = json!("tok_declined");
    let statuses = post_all(&orders_url, bodies, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mut invalid = order_body(10, "20.00");
    invalid["order_details"]["price"] = json!(-1);
    let statuses = post_all(&orders_url, vec![invalid], 1).await;
    assert_eq!(statuses, [422]);
    env.reader(&env.topic(Topic::OrderConfirmed))
        .wait_for(9, Duration::from_secs(60));

    let orders_text = scrape_until(
        &format!("{orders_url}/metrics"),
        Duration::from_secs(10),
        |t| value(t, r#"flatpack_orders_total{outcome="accepted"}"#).is_some(),
    )
    .await;
    assert_eq!(
        value(&orders_text, r#"flatpack_orders_total{outcome="accepted"}"#),
        Some(9.0),
        "{orders_text}"
    );
    assert_eq!(
        value(
            &orders_text,
            r#"flatpack_orders_total{outcome="rejected",reason="invalid"}"#
        ),
        Some(1.0),
        "{orders_text}"
    );
    assert_eq!(
        value(
            &orders_text,
            r#"flatpack_http_requests_total{route="/order",status="200"}"#
        ),
        Some(9.0),
        "{orders_text}"
    );

    let decided = |t: &str| {
        value(t, r#"flatpack_decisions_total{status="confirmed"}"#).unwrap_or(0.0)
            + value(t, r#"flatpack_decisions_total{status="declined"}"#).unwrap_or(0.0)
            >= 9.0
    };
    let text = scrape_until(
        &format!("{ops_url}/metrics"),
        Duration::from_secs(30),
        decided,
    )
    .await;
    assert_eq!(
        value(&text, r#"flatpack_decisions_total{status="confirmed"}"#),
        Some(8.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"flatpack_decisions_total{status="declined"}"#),
        Some(1.0),
        "{text}"
    );
    let committed = value(
        &text,
        r#"flatpack_transactions_total{service="transactions",outcome="committed"}"#,
    )
    .unwrap_or(0.0);
    assert!(committed >= 1.0, "{text}");
    assert_eq!(
        value(
            &text,
            r#"flatpack_transaction_messages_count{service="transactions"}"#
        ),
        Some(committed),
        "one batch size per committed transaction\n{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"flatpack_order_age_seconds_count{stage="decided"}"#
        ),
        Some(9.0),
        "{text}"
    );
    // librdkafka's statistics come every 5 s: the lag of every partition of order_details
    // shows, and comes down to 0 once everything is decided.
    let lag_series = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("flatpack_consumer_lag{") && l.contains("order_details"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    scrape_until(
        &format!("{ops_url}/metrics"),
        Duration::from_secs(30),
        |t| {
            let series = lag_series(t);
            series.len() == crate::helpers::TEST_PARTITIONS as usize
                && series.iter().all(|line| line.ends_with(" 0"))
        },
    )
    .await;

    assert!(transactions.terminate(Duration::from_secs(30)).success());
    assert!(orders.terminate(Duration::from_secs(30)).success());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_flags_stuck_orders_and_shows_each_stages_lag() {
    let env = test_env!();
    let dashboard_addr = free_addr();
    let mut vars = env.service_vars();
    vars.push(("DASHBOARD_HTTP_ADDR".into(), dashboard_addr.clone()));
    vars.push(("DASHBOARD_STUCK_AFTER_MS".into(), "1000".into()));
    let dashboard = ServiceProcess::start("dashboard", &vars);
    let url = format!("http://{dashboard_addr}");
    scrape_until(&format!("{url}/readyz"), Duration::from_secs(60), |_| true).await;
    let api = spawn_orders(&env).await;

    // No transactions service yet: three orders wait for their decision.
    let statuses = post_all(
        &api.url,
        (1..=3).map(|id| order_body(id, "5.00")).collect(),
        3,
    )
    .await;
    assert_eq!(statuses, [200, 200, 200]);
    let totals = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap_or_default();
    let lag_of = |totals: &serde_json::Value, stage: &str| {
        totals["pipeline"]["lag"]
            .as_array()
            .and_then(|lags| lags.iter().find(|l| l["stage"] == stage))
            .and_then(|l| l["lag"].as_i64())
    };
    let text = scrape_until(&format!("{url}/api/totals"), Duration::from_secs(30), |t| {
        let t = totals(t);
        t["pipeline"]["stuck_awaiting_decision"] == 3 && lag_of(&t, "transactions") == Some(3)
    })
    .await;
    let listed: Vec<String> = totals(&text)["pipeline"]["stuck"]
        .as_array()
        .map(|stuck| {
            let mut ids: Vec<String> = stuck.iter().map(|o| o["order_id"].to_string()).collect();
            ids.sort();
            ids
        })
        .unwrap_or_default();
    assert_eq!(listed, ["1", "2", "3"], "{text}");
    scrape_until(&format!("{url}/metrics"), Duration::from_secs(15), |t| {
        value(t, r#"flatpack_stuck_orders{awaiting="decision"}"#) == Some(3.0)
            && value(t, r#"flatpack_group_lag{stage="transactions"}"#) == Some(3.0)
    })
    .await;

    // Decided now, they wait for their e-mail (no email service runs), and transactions has
    // no lag left.
    let transactions = spawn_transactions(&env, "stages");
    scrape_until(&format!("{url}/api/totals"), Duration::from_secs(60), |t| {
        let t = totals(t);
        t["pipeline"]["stuck_awaiting_decision"] == 0
            && t["pipeline"]["stuck_awaiting_email"] == 3
            && lag_of(&t, "transactions") == Some(0)
    })
    .await;

    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    assert!(dashboard.terminate(Duration::from_secs(30)).success());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_turned_off_and_a_bad_switch_is_named() {
    let env = test_env!();
    let mut vars = env.service_vars();
    vars.push(("FLATPACK_METRICS".into(), "off".into()));
    let (transactions, ops_url) = transactions_with_ops(vars, "metrics-off").await;
    let (status, body) = get(&format!("{ops_url}/metrics")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("FLATPACK_METRICS=off"), "{body}");
    drop(transactions);

    let mut vars = env.service_vars();
    vars.push(("FLATPACK_METRICS".into(), "sometimes".into()));
    let output = std::process::Command::new(crate::helpers::binary("transactions"))
        .envs(vars)
        .output()
        .expect("running transactions");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid setting FLATPACK_METRICS"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_without_its_broker_is_alive_but_not_ready() {
    // A port nothing listens on: the broker is away for the whole test.
    let vars = vec![("KAFKA_BOOTSTRAP_SERVERS".into(), free_addr())];
    let (mut transactions, ops_url) = transactions_with_ops(vars, "no-broker").await;
    let (status, body) = get(&format!("{ops_url}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    // Still waiting, still alive, a while later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        transactions.is_running(),
        "transactions exited without its broker"
    );
    assert_eq!(get(&format!("{ops_url}/healthz")).await.0, 200);
}
