//! `order_id` as the idempotency key, from the customer's click to the e-mail: the same order
//! sent again, at once or after any service was SIGKILLed, is answered as first accepted and
//! decided, e-mailed and counted once.

use std::time::Duration;

use common::{AnalyticsResult, Topic};
use serde_json::{Value, json};

use crate::helpers::mailpit::mailpit;
use crate::helpers::{Record, ServiceProcess, TestEnv, post_order, start_orders_process};
use crate::test_env;

/// The four services of one order's way, each its own process.
struct Pipeline {
    orders: ServiceProcess,
    orders_url: String,
    transactions: ServiceProcess,
    email: ServiceProcess,
    analytics: ServiceProcess,
    vars: Vec<(String, String)>,
    email_vars: Vec<(String, String)>,
}

impl Pipeline {
    async fn start(env: &TestEnv, smtp: Vec<(String, String)>) -> Self {
        let vars = env.service_vars();
        let mut email_vars = vars.clone();
        email_vars.extend(smtp);
        let (orders, orders_url) = start_orders_process(&vars).await;
        Self {
            orders,
            orders_url,
            transactions: ServiceProcess::start("transactions", &transactions_vars(&vars)),
            email: ServiceProcess::start("email", &email_vars),
            analytics: ServiceProcess::start("analytics", &vars),
            vars,
            email_vars,
        }
    }

    /// SIGKILLs each service in turn and starts it again.
    async fn kill_and_restart_each(self) -> Self {
        self.orders.kill();
        let (orders, orders_url) = start_orders_process(&self.vars).await;
        self.transactions.kill();
        let transactions = ServiceProcess::start("transactions", &transactions_vars(&self.vars));
        self.email.kill();
        let email = ServiceProcess::start("email", &self.email_vars);
        self.analytics.kill();
        let analytics = ServiceProcess::start("analytics", &self.vars);
        Self {
            orders,
            orders_url,
            transactions,
            email,
            analytics,
            ..self
        }
    }

    fn stop(self) {
        for service in [self.orders, self.transactions, self.email, self.analytics] {
            assert!(service.terminate(Duration::from_secs(30)).success());
        }
    }
}

fn transactions_vars(vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut vars = vars.to_vec();
    vars.push(("TRANSACTIONS_INSTANCE_ID".into(), "idem".into()));
    vars
}

/// Sends `body` `copies` times at once; returns each answer's status and body.
async fn post_copies(url: &str, body: &Value, copies: usize) -> Vec<(u16, Value)> {
    let client = reqwest::Client::new();
    let sends = (0..copies).map(|_| post_order(&client, url, body));
    futures::future::join_all(sends).await
}

fn order(env: &TestEnv, id: u64, price: f64) -> Value {
    json!({
        "user_id": 7,
        "order_id": id,
        "user_email": format!("{}{id}@example.com", env.prefix),
        "order_details": {"price": price, "item": "POÄNG armchair"},
    })
}

/// Reads `topic` until a record keyed `last` is in, then until it settles; returns every
/// record's key, sorted.
fn keys_until(env: &TestEnv, topic: Topic, last: &str) -> Vec<String> {
    let mut reader = env.reader(&env.topic(topic));
    let records: Vec<Record> = reader
        .read_until(
            &format!("{last} on {topic}"),
            Duration::from_secs(120),
            |records| records.iter().any(|r| r.key.as_deref() == Some(last)),
        )
        .to_vec();
    let mut keys: Vec<String> = records.into_iter().filter_map(|r| r.key).collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_order_sent_20_times_at_once_and_after_every_service_was_killed_is_one_order() {
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    let pipeline = Pipeline::start(&env, mailpit.smtp_vars()).await;
    let first = order(&env, 1, 120.0);

    let answers = post_copies(&pipeline.orders_url, &first, 20).await;
    let accepted = answers[0].1.clone();
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer, &accepted, "every copy is answered as the first was");
    }
    let env2 = env.clone();
    let decided =
        tokio::task::spawn_blocking(move || keys_until(&env2, Topic::OrderConfirmed, "1"))
            .await
            .unwrap();
    assert_eq!(decided, ["1"]);

    let pipeline = pipeline.kill_and_restart_each().await;
    let answers = post_copies(&pipeline.orders_url, &first, 3).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(
            answer, &accepted,
            "answered as first accepted after the restarts"
        );
    }
    let mut dearer = first.clone();
    dearer["order_details"]["price"] = json!(999.0);
    let answers = post_copies(&pipeline.orders_url, &dearer, 1).await;
    assert_eq!(answers[0].0, 409, "{}", answers[0].1);

    // A second order behind them: once it is decided, e-mailed and counted, everything
    // before it was too.
    let (status, answer) = post_copies(&pipeline.orders_url, &order(&env, 2, 80.0), 1)
        .await
        .remove(0);
    assert_eq!(status, 200, "{answer}");
    let env2 = env.clone();
    let (decided, sent, counted) = tokio::task::spawn_blocking(move || {
        (
            keys_until(&env2, Topic::OrderConfirmed, "2"),
            keys_until(&env2, Topic::OrderEmailSent, "2"),
            env2.reader(&env2.topic(Topic::AnalyticsResult))
                .read_until(
                    "the count of order 2",
                    Duration::from_secs(120),
                    |records| {
                        records.iter().any(|r| {
                            serde_json::from_slice::<AnalyticsResult>(&r.payload)
                                .is_ok_and(|result| result.total_orders_count == 2)
                        })
                    },
                )
                .to_vec(),
        )
    })
    .await
    .unwrap();
    assert_eq!(decided, ["1", "2"], "one decision per order");
    assert_eq!(sent, ["1", "2"], "one e-mail record per order");
    let results: Vec<AnalyticsResult> = counted
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let last = results.iter().max_by_key(|r| r.seq).unwrap();
    assert_eq!(last.seq, 2, "two decisions counted, no more");
    assert_eq!(last.total_orders_count, 2);
    assert_eq!(last.total_revenue_exact, "200".parse().unwrap());
    let mails = mailpit
        .wait_for(&format!("to:{}", env.prefix), 2, Duration::from_secs(60))
        .await;
    assert_eq!(mails.len(), 2, "one e-mail per order");

    pipeline.stop();
    env.cleanup().await;
}
