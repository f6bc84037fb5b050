//! What an operator scrapes: every service's `/metrics`, and the health and readiness of the
//! services without an HTTP API of their own.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::Topic;
use serde_json::json;

use crate::helpers::{ServiceProcess, order_body, post_all};
use crate::test_env;

/// A port free right now, for a process that must listen where the test can find it.
fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    format!(
        "127.0.0.1:{}",
        listener.local_addr().expect("address").port()
    )
}

/// The value of the series `name{labels}` (labels exactly as rendered) in Prometheus text,
/// or `None` when the series is absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Scrapes `url` until `done` holds for its text; panics with the last text after `deadline`.
async fn scrape_until(url: &str, deadline: Duration, done: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + deadline;
    loop {
        let (status, text) = get(url).await;
        if status == 200 && done(&text) {
            return text;
        }
        assert!(
            Instant::now() < until,
            "{url} did not show what was expected within {deadline:?}; last answer {status}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_and_transactions_count_requests_outcomes_and_decisions_exactly() {
    let env = test_env!();
    let orders_addr = free_addr();
    let ops_addr = free_addr();
    let mut orders_vars = env.service_vars();
    orders_vars.push(("ORDERS_HTTP_ADDR".into(), orders_addr.clone()));
    let orders = ServiceProcess::start("orders", &orders_vars);
    let mut transactions_vars = env.service_vars();
    transactions_vars.push(("TRANSACTIONS_INSTANCE_ID".into(), "metrics".into()));
    transactions_vars.push(("TRANSACTIONS_OPS_ADDR".into(), ops_addr.clone()));
    let transactions = ServiceProcess::start("transactions", &transactions_vars);

    let orders_url = format!("http://{orders_addr}");
    let ops_url = format!("http://{ops_addr}");
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
