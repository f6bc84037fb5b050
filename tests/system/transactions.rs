//! The transactions service: one decision per order, exactly once, through crashes.

use std::collections::HashMap;
use std::time::Duration;

use common::Topic;
use serde_json::{Value, json};

use crate::helpers::{
    Record, ServiceProcess, TestEnv, free_addr, order_body, post_all, scrape_until, spawn_orders,
    spawn_transactions,
};
use crate::test_env;

/// Decisions per order id, as a `read_committed` reader sees them.
fn decisions_by_order(records: &[Record]) -> HashMap<String, Vec<Value>> {
    let mut by_order: HashMap<String, Vec<Value>> = HashMap::new();
    for record in records {
        let decision = record.json();
        assert_eq!(
            record.key.as_deref(),
            Some(decision["order_id"].to_string().trim_matches('"')),
            "decisions are keyed by order_id"
        );
        by_order
            .entry(decision["order_id"].to_string())
            .or_default()
            .push(decision);
    }
    by_order
}

/// Asserts that orders `ids` each have exactly one decision and nothing else was decided.
fn assert_exactly_one_each(records: &[Record], ids: impl Iterator<Item = u64>) {
    let by_order = decisions_by_order(records);
    let mut missing = Vec::new();
    let mut expected = 0;
    for id in ids {
        expected += 1;
        match by_order.get(&id.to_string()).map(Vec::len) {
            Some(1) => {}
            Some(n) => panic!("order {id} has {n} decisions"),
            None => missing.push(id),
        }
    }
    assert!(missing.is_empty(), "orders without a decision: {missing:?}");
    assert_eq!(
        by_order.len(),
        expected,
        "decisions for orders never placed"
    );
    assert_eq!(records.len(), expected, "one record per order");
}

#[tokio::test(flavor = "multi_thread")]
async fn posted_orders_get_exactly_one_decision_each_with_the_seed_fields() {
    let env = test_env!();
    let api = spawn_orders(&env).await;
    let service = spawn_transactions(&env, "a");

    let mut bodies: Vec<Value> = (1..=60).map(|id| order_body(id, "129.99")).collect();
    bodies[9]["order_details"]["payment_token"] = json!("tok_declined");
    bodies[19]["order_details"]["price"] = json!(25_000);
    let statuses = post_all(&api.url, bodies, 8).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let mut reader = env.reader(&env.topic(Topic::OrderConfirmed));
    let records = reader.read_at_least(60, Duration::from_secs(60)).to_vec();
    assert_exactly_one_each(&records, 1..=60);

    let by_order = decisions_by_order(&records);
    let confirmed = &by_order["1"][0];
    for field in [
        "user_id",
        "order_id",
        "user_email",
        "order_details",
        "time",
        "status",
    ] {
        assert!(
            confirmed.get(field).is_some(),
            "{field} missing from {confirmed}"
        );
    }
    assert_eq!(confirmed["status"], json!("confirmed"));
    assert_eq!(confirmed["user_id"], json!(7));
    assert_eq!(confirmed["order_details"]["price"], json!(129.99));
    assert!(confirmed["time"].is_f64());
    assert!(confirmed.get("reason").is_none());
    assert_eq!(by_order["10"][0]["status"], json!("declined"));
    assert_eq!(by_order["10"][0]["reason"], json!("card declined"));
    assert_eq!(by_order["20"][0]["status"], json!("declined"));
    assert_eq!(
        by_order["20"][0]["reason"],
        json!("amount 25000.00 exceeds the limit of 10000.00")
    );

    service.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_messages_go_to_the_dlq_with_their_origin_and_the_next_order_is_confirmed() {
    let env = test_env!();
    let source = env.topic(Topic::OrderDetails);
    let dlq = env.dlq(Topic::OrderDetails);
    env.create_topics(&[
        source.clone(),
        dlq.clone(),
        env.topic(Topic::OrderConfirmed),
    ])
    .await;
    // All on one key, so all in one partition and in this order.
    env.produce(&source, "k", b"this is not json").await;
    let negative = json!({"user_id": 1, "order_id": "k", "user_email": "a@example.com",
        "order_details": {"price": -3}, "time": 1.0});
    env.produce(&source, "k", negative.to_string().as_bytes())
        .await;
    // What the seed's own orders backend writes: must be decided, not dead-lettered.
    let seed = json!({"user_id": 1, "order_id": "k", "user_email": "a@example.com",
        "order_details": {"price": 99}, "time": 1_700_000_000.25});
    env.produce(&source, "k", seed.to_string().as_bytes()).await;

    let service = spawn_transactions(&env, "a");

    let mut dead = env.reader(&dlq);
    let dead = dead.read_at_least(2, Duration::from_secs(60)).to_vec();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].payload, b"this is not json");
    assert_eq!(dead[0].key.as_deref(), Some("k"));
    assert_eq!(dead[0].headers["dlq.topic"], source);
    assert_eq!(dead[0].headers["dlq.offset"], "0");
    assert_eq!(dead[0].headers["dlq.service"], "transactions");
    assert!(dead[0].headers.contains_key("dlq.partition"));
    assert!(
        dead[0].headers["dlq.error"].contains("expected"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(dead[1].headers["dlq.offset"], "1");
    assert_eq!(
        dead[1].headers["dlq.error"],
        "order_details.price: must not be negative"
    );

    let mut decided = env.reader(&env.topic(Topic::OrderConfirmed));
    let decided = decided.read_at_least(1, Duration::from_secs(60)).to_vec();
    assert_eq!(decided.len(), 1);
    let decision = decided[0].json();
    assert_eq!(decision["status"], json!("confirmed"));
    assert_eq!(decision["time"], json!(1_700_000_000.25));
    assert_eq!(decision["order_details"]["price"], json!(99));

    service.stop().await.unwrap();
    env.cleanup().await;
}

/// The transactions service's topics, created before it starts so that readers can open them.
async fn create_topics(env: &TestEnv) {
    env.create_topics(&[
        env.topic(Topic::OrderDetails),
        env.topic(Topic::OrderConfirmed),
        env.dlq(Topic::OrderDetails),
    ])
    .await;
}

fn process_vars(env: &TestEnv, instance: &str, max_batch: usize) -> Vec<(String, String)> {
    let mut vars = env.service_vars();
    vars.push(("TRANSACTIONS_INSTANCE_ID".into(), instance.into()));
    vars.push(("TRANSACTIONS_MAX_BATCH".into(), max_batch.to_string()));
    vars
}

/// Waits until a read_committed reader sees at least `count` decisions.
fn wait_for_decisions(env: &TestEnv, count: usize) {
    env.reader(&env.topic(Topic::OrderConfirmed))
        .wait_for(count, Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_the_middle_of_1200_orders_loses_and_duplicates_no_decision() {
    const ORDERS: u64 = 1200;
    let env = test_env!();
    create_topics(&env).await;
    let api = spawn_orders(&env).await;
    // Small transactions, so that a kill lands inside one.
    let vars = process_vars(&env, "crashy", 25);
    let service = ServiceProcess::start("transactions", &vars);

    let url = api.url.clone();
    let posting = tokio::spawn(async move {
        post_all(
            &url,
            (1..=ORDERS).map(|id| order_body(id, "10.01")).collect(),
            16,
        )
        .await
    });

    // Kill it twice while orders are flowing, each time as soon as progress is visible.
    let mut service = service;
    for round in 1..=2 {
        let env2 = env.clone();
        tokio::task::spawn_blocking(move || wait_for_decisions(&env2, 200 * round))
            .await
            .unwrap();
        assert!(service.is_running(), "the service died on its own");
        service.kill();
        service = ServiceProcess::start("transactions", &vars);
    }

    let statuses = posting.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every order was accepted"
    );

    let env2 = env.clone();
    let records = tokio::task::spawn_blocking(move || {
        let mut reader = env2.reader(&env2.topic(Topic::OrderConfirmed));
        reader
            .read_at_least(ORDERS as usize, Duration::from_secs(120))
            .to_vec()
    })
    .await
    .unwrap();
    assert_exactly_one_each(&records, 1..=ORDERS);

    let status = service.terminate(Duration::from_secs(30));
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_the_open_batch_and_exits_zero() {
    let env = test_env!();
    create_topics(&env).await;
    let api = spawn_orders(&env).await;
    let vars = process_vars(&env, "graceful", 50);
    let service = ServiceProcess::start("transactions", &vars);
    let statuses = post_all(
        &api.url,
        (1..=300).map(|id| order_body(id, "5")).collect(),
        8,
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200));

    let env2 = env.clone();
    tokio::task::spawn_blocking(move || wait_for_decisions(&env2, 1))
        .await
        .unwrap();
    let status = service.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM ends with exit code 0");

    // Whatever was not decided before the stop is decided after a restart, once.
    let service = ServiceProcess::start("transactions", &vars);
    let env2 = env.clone();
    let records = tokio::task::spawn_blocking(move || {
        env2.reader(&env2.topic(Topic::OrderConfirmed))
            .read_at_least(300, Duration::from_secs(120))
            .to_vec()
    })
    .await
    .unwrap();
    assert_exactly_one_each(&records, 1..=300);

    assert!(service.terminate(Duration::from_secs(30)).success());
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Writes `order` to `order_details` without a key, as the seed's kafka-python producer does.
async fn produce_unkeyed(env: &TestEnv, order: &Value) {
    use rdkafka::producer::FutureRecord;
    env.producer()
        .send(
            FutureRecord::<(), _>::to(&env.topic(Topic::OrderDetails))
                .payload(order.to_string().as_bytes()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .expect("producing an unkeyed order");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_is_decided_once_however_often_it_comes_and_a_used_order_id_is_refused() {
    let env = test_env!();
    let source = env.topic(Topic::OrderDetails);
    create_topics(&env).await;
    let order = |id: u64, price: u64, time: f64| {
        json!({"user_id": 7, "order_id": id, "user_email": "anna@example.com",
            "order_details": {"price": price, "item": "BILLY bookcase"}, "time": time})
    };
    // The original; a client's retry (the API gives each copy its own time); the seed's
    // producer writing the same order without a key; another order under the same id.
    env.produce(
        &source,
        "1001",
        order(1001, 349, 1.0).to_string().as_bytes(),
    )
    .await;
    env.produce(
        &source,
        "1001",
        order(1001, 349, 2.0).to_string().as_bytes(),
    )
    .await;
    produce_unkeyed(&env, &order(1001, 349, 3.0)).await;
    env.produce(
        &source,
        "1001",
        order(1001, 350, 4.0).to_string().as_bytes(),
    )
    .await;
    produce_unkeyed(&env, &order(1002, 120, 5.0)).await;

    let service = spawn_transactions(&env, "a");
    let mut dead = env.reader(&env.dlq(Topic::OrderDetails));
    let dead = dead.read_at_least(1, Duration::from_secs(60)).to_vec();
    assert_eq!(dead.len(), 1, "only the other order under 1001 is refused");
    assert_eq!(dead[0].json()["order_details"]["price"], json!(350));
    assert_eq!(
        dead[0].headers["dlq.error"],
        "order_id 1001 was already used for a different order; a new order needs a new order_id"
    );
    let mut reader = env.reader(&env.topic(Topic::OrderConfirmed));
    let records = reader.read_at_least(2, Duration::from_secs(60)).to_vec();
    assert_exactly_one_each(&records, 1001..=1002);
    assert_eq!(decisions_by_order(&records)["1001"][0]["time"], json!(1.0));

    // A restarted instance knows what was decided (from the changelog), not only this one.
    service.stop().await.unwrap();
    let service = spawn_transactions(&env, "b");
    env.produce(
        &source,
        "1001",
        order(1001, 349, 6.0).to_string().as_bytes(),
    )
    .await;
    env.produce(&source, "1003", order(1003, 99, 7.0).to_string().as_bytes())
        .await;
    let mut reader = env.reader(&env.topic(Topic::OrderConfirmed));
    let records = reader.read_at_least(3, Duration::from_secs(60)).to_vec();
    assert_exactly_one_each(&records, 1001..=1003);

    service.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_group_member_joins_again_and_decides_every_later_order() {
    let env = test_env!();
    create_topics(&env).await;
    let api = spawn_orders(&env).await;
    let service = spawn_transactions(&env, "usurped");
    let statuses = post_all(
        &api.url,
        (1..=20).map(|id| order_body(id, "5.00")).collect(),
        4,
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    wait_for_decisions(&env, 20);

    // Another consumer takes the service's static membership: its own consumer is fenced.
    let usurper = env.clone();
    let source = env.topic(Topic::OrderDetails);
    // Its transactional id is its `group.instance.id`.
    let instance = env.kafka.topics().scoped("transactions-usurped");
    tokio::task::spawn_blocking(move || {
        usurper.usurp_static_member("transactions", &instance, &source)
    })
    .await
    .unwrap();

    let statuses = post_all(
        &api.url,
        (21..=40).map(|id| order_body(id, "5.00")).collect(),
        4,
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let env2 = env.clone();
    let records = tokio::task::spawn_blocking(move || {
        let mut reader = env2.reader(&env2.topic(Topic::OrderConfirmed));
        reader.read_at_least(40, Duration::from_secs(120)).to_vec()
    })
    .await
    .unwrap();
    assert_exactly_one_each(&records, 1..=40);

    service.stop().await.expect("a clean stop, not an error");
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_the_on_disk_copy_knows_every_decided_order_and_nothing_is_read_again() {
    let env = test_env!();
    create_topics(&env).await;
    let api = spawn_orders(&env).await;
    let store_dir = std::env::temp_dir().join(format!("{}transactions-state", env.prefix));
    let ops_addr = free_addr();
    let mut vars = process_vars(&env, "durable", 50);
    vars.push(("FLATPACK_STORE_DIR".into(), store_dir.display().to_string()));
    vars.push(("TRANSACTIONS_OPS_ADDR".into(), ops_addr.clone()));
    let service = ServiceProcess::start("transactions", &vars);
    let statuses = post_all(
        &api.url,
        (1..=30).map(|id| order_body(id, "5")).collect(),
        4,
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let env2 = env.clone();
    tokio::task::spawn_blocking(move || wait_for_decisions(&env2, 30))
        .await
        .unwrap();
    assert!(service.terminate(Duration::from_secs(30)).success());

    let service = ServiceProcess::start("transactions", &vars);
    // A copy of order 5 as orders wrote it, and a new order.
    let env2 = env.clone();
    let order_5 = tokio::task::spawn_blocking(move || {
        env2.reader(&env2.topic(Topic::OrderDetails))
            .read_at_least(30, Duration::from_secs(60))
            .iter()
            .find(|r| r.key.as_deref() == Some("5"))
            .expect("order 5 in order_details")
            .payload
            .clone()
    })
    .await
    .unwrap();
    env.produce(&env.topic(Topic::OrderDetails), "5", &order_5)
        .await;
    let statuses = post_all(&api.url, vec![order_body(31, "5")], 1).await;
    assert_eq!(statuses, [200]);

    let changelog = env.kafka.topics().changelog("transactions-decided");
    let metrics = scrape_until(
        &format!("http://{ops_addr}/metrics"),
        Duration::from_secs(60),
        |text| text.contains("flatpack_duplicate_orders_total{outcome=\"skipped\"} 1"),
    )
    .await;
    let restored = format!("flatpack_state_restored_total{{changelog=\"{changelog}\"}} 0");
    assert!(
        metrics.lines().any(|line| line == restored),
        "the restart read no decided order again ({restored}):\n{metrics}"
    );
    let env2 = env.clone();
    let records = tokio::task::spawn_blocking(move || {
        env2.reader(&env2.topic(Topic::OrderConfirmed))
            .read_at_least(31, Duration::from_secs(60))
            .to_vec()
    })
    .await
    .unwrap();
    assert_exactly_one_each(&records, 1..=31);

    assert!(service.terminate(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(&store_dir);
    api.stop().await.unwrap();
    env.cleanup().await;
}
