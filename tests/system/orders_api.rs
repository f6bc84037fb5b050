//! The orders API: validation at the edge, acknowledged writes, and behaviour without a broker.

use std::time::{Duration, Instant};

use common::{KafkaSettings, Settings, Topic};
use serde_json::{Value, json};

use crate::helpers::{order_body, post_order, scrape_until, spawn_orders, start_orders_process};
use crate::test_env;

#[tokio::test(flavor = "multi_thread")]
async fn post_order_answers_the_accepted_order_after_it_is_on_order_details() {
    let env = test_env!();
    let api = spawn_orders(&env).await;

    let response = reqwest::Client::new()
        .post(format!("{}/order", api.url))
        .json(&json!({
            "user_id": "u-1", "order_id": 1001, "user_email": "anna@example.com",
            "order_details": {"price": 349.5, "item": "BILLY bookcase", "qty": 2}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["order_id"], json!(1001));
    assert_eq!(accepted["user_id"], json!("u-1"));
    assert!(accepted["time"].is_f64());

    let mut reader = env.reader(&env.topic(Topic::OrderDetails));
    let records = reader.read_at_least(1, Duration::from_secs(30));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some("1001"));
    let on_topic = records[0].json();
    assert_eq!(
        on_topic, accepted,
        "the topic holds exactly what the client was told"
    );
    assert_eq!(
        on_topic["order_details"],
        json!({"price": 349.5, "item": "BILLY bookcase", "qty": 2})
    );
    assert_eq!(on_topic["user_email"], json!("anna@example.com"));

    api.stop().await.unwrap();
    env.cleanup().await;
}

/// (what is wrong, content type, body, expected status, text the error must contain)
fn malformed_requests() -> Vec<(&'static str, &'static str, Vec<u8>, u16, &'static str)> {
    let valid = order_body(1, "10");
    let with = |path: &[&str], value: Value| {
        let mut body = valid.clone();
        let mut target = &mut body;
        for key in &path[..path.len() - 1] {
            target = &mut target[*key];
        }
        target[path[path.len() - 1]] = value;
        serde_json::to_vec(&body).unwrap()
    };
    let without = |key: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(key);
        serde_json::to_vec(&body).unwrap()
    };
    let json = "application/json";
    vec![
        (
            "missing user_email",
            json,
            without("user_email"),
            422,
            "user_email: missing field",
        ),
        (
            "missing order_id",
            json,
            without("order_id"),
            422,
            "order_id: missing field",
        ),
        (
            "missing user_id",
            json,
            without("user_id"),
            422,
            "user_id: missing field",
        ),
        (
            "missing order_details",
            json,
            without("order_details"),
            422,
            "order_details: missing field",
        ),
        (
            "missing price",
            json,
            with(&["order_details"], json!({"item": "x"})),
            422,
            "order_details.price: missing field",
        ),
        (
            "bad e-mail",
            json,
            with(&["user_email"], json!("anna-at-example")),
            422,
            "user_email: is not a valid e-mail address",
        ),
        (
            "e-mail not a string",
            json,
            with(&["user_email"], json!(42)),
            422,
            "user_email: invalid type",
        ),
        (
            "negative price",
            json,
            with(&["order_details", "price"], json!(-5)),
            422,
            "order_details.price: must not be negative",
        ),
        (
            "fractional cents",
            json,
            with(&["order_details", "price"], json!(1.005)),
            422,
            "order_details.price: must have at most 2 decimal places",
        ),
        (
            "price not a number",
            json,
            with(&["order_details", "price"], json!("cheap")),
            422,
            "order_details.price: is not a decimal number",
        ),
        (
            "price too large",
            json,
            with(&["order_details", "price"], json!(1e12)),
            422,
            "order_details.price: must be at most",
        ),
        (
            "order_id a float",
            json,
            with(&["order_id"], json!(1.5)),
            422,
            "order_id: invalid type",
        ),
        (
            "order_id empty",
            json,
            with(&["order_id"], json!("")),
            422,
            "order_id: must not be empty",
        ),
        (
            "order_id too long",
            json,
            with(&["order_id"], json!("x".repeat(500))),
            422,
            "order_id: must be at most 128 characters",
        ),
        (
            "order_id an object",
            json,
            with(&["order_id"], json!({"a": 1})),
            422,
            "order_id: invalid type",
        ),
        (
            "order_details not an object",
            json,
            with(&["order_details"], json!([1, 2])),
            422,
            "order_details: invalid type",
        ),
        (
            "body not an object",
            json,
            b"[1,2,3]".to_vec(),
            422,
            "invalid type",
        ),
        (
            "the fields as an array, in order",
            json,
            br#"[7, 1, "anna@example.com", {"price": 10}]"#.to_vec(),
            422,
            "body: invalid type: must be a JSON object",
        ),
        (
            "not JSON",
            json,
            b"user_id=1&order_id=2".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "truncated JSON",
            json,
            b"{\"user_id\": 1, ".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "trailing garbage",
            json,
            [serde_json::to_vec(&valid).unwrap(), b"xyz".to_vec()].concat(),
            400,
            "not valid JSON",
        ),
        ("empty body", json, Vec::new(), 400, "not valid JSON"),
        (
            "huge body",
            json,
            with(&["order_details", "note"], json!("x".repeat(100_000))),
            413,
            "larger than 16384 bytes",
        ),
        (
            "wrong content type",
            "text/plain",
            serde_json::to_vec(&valid).unwrap(),
            415,
            "Content-Type must be application/json",
        ),
        (
            "form content type",
            "application/x-www-form-urlencoded",
            b"user_id=1".to_vec(),
            415,
            "Content-Type must be application/json",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_a_4xx_naming_the_problem_and_publish_nothing() {
    let env = test_env!();
    let api = spawn_orders(&env).await;
    let client = reqwest::Client::new();

    let cases = malformed_requests();
    assert!(cases.len() >= 15);
    for (what, content_type, body, status, text) in cases {
        let response = client
            .post(format!("{}/order", api.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(response.status().as_u16(), status, "{what}");
        if status == 413 {
            // The unread body ends the connection; the client must be told not to reuse it.
            assert_eq!(response.headers()["connection"], "close", "{what}");
        }
        let error: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(text),
            "{what}: expected {text:?} in {message:?}"
        );
        if status == 422 && text.contains(':') {
            let field = text.split(':').next().unwrap();
            assert_eq!(error["field"], json!(field), "{what}");
        }
    }

    // Nothing from the bad requests was published: the only order on the topic is this one.
    let response = client
        .post(format!("{}/order", api.url))
        .json(&order_body(77, "10"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = env.reader(&env.topic(Topic::OrderDetails));
    let records = reader.read_at_least(1, Duration::from_secs(30));
    assert_eq!(records.len(), 1, "only the valid order is on the topic");
    assert_eq!(records[0].key.as_deref(), Some("77"));

    api.stop().await.unwrap();
    env.cleanup().await;
}

/// No broker at all: the API still answers, quickly and clearly, and never hangs.
#[tokio::test(flavor = "multi_thread")]
async fn post_order_without_a_broker_answers_503_within_the_publish_timeout() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let kafka = KafkaSettings::from_vars(vec![(
        "KAFKA_BOOTSTRAP_SERVERS".to_string(),
        dead_addr.to_string(),
    )])
    .unwrap();
    let settings = <orders::OrdersSettings as common::Settings>::from_vars(vec![(
        "ORDERS_PUBLISH_TIMEOUT_MS".to_string(),
        "1500".to_string(),
    )])
    .unwrap();
    let state = orders::AppState::new(&kafka, &settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, orders::router(state)).await });
    let client = reqwest::Client::new();

    let started = Instant::now();
    let response = client
        .post(format!("{url}/order"))
        .json(&order_body(1, "10"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    // Without a broker the orders accepted before cannot be read, so nothing is taken.
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("send the same order again"),
        "{error}"
    );
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");

    let ready = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.abort();
}

/// Posts `body` and returns the status and the JSON answer.
async fn post(url: &str, body: &Value) -> (u16, Value) {
    post_order(&reqwest::Client::new(), url, body).await
}

/// Asserts a `409` that names `order_id` and tells the client to use a new one.
fn assert_order_id_used(status: u16, answer: &Value) {
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["field"], json!("order_id"), "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("already used for a different order") && error.contains("new order_id"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_order_again_gets_the_first_answer_and_another_order_under_its_id_a_409() {
    let env = test_env!();
    env.create_topics(&[env.topic(Topic::OrderDetails)]).await;
    let api = spawn_orders(&env).await;
    let order = order_body(7, "199.00");

    let (status, first) = post(&api.url, &order).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = post(&api.url, &order).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again, first,
        "a retry is answered with the order as first accepted"
    );

    let mut dearer = order.clone();
    dearer["order_details"]["price"] = json!(249.00);
    let (status, answer) = post(&api.url, &dearer).await;
    assert_order_id_used(status, &answer);
    // A declined order sent again with another card is another order: a new order_id.
    let mut new_card = order.clone();
    new_card["order_details"]["payment_token"] = json!("tok_visa_2");
    let (status, answer) = post(&api.url, &new_card).await;
    assert_order_id_used(status, &answer);

    // A restarted API knows it too: it reads what was accepted from order_details.
    api.stop().await.unwrap();
    let api = spawn_orders(&env).await;
    let (status, after_restart) = post(&api.url, &order).await;
    assert_eq!(status, 200, "{after_restart}");
    assert_eq!(after_restart, first);
    let (status, answer) = post(&api.url, &dearer).await;
    assert_order_id_used(status, &answer);

    let mut reader = env.reader(&env.topic(Topic::OrderDetails));
    let records = reader.read_at_least(1, Duration::from_secs(30));
    assert_eq!(records.len(), 1, "written once");
    assert_eq!(records[0].json(), first);

    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_taken_by_one_instance_is_answered_as_such_by_another_and_after_a_sigkill() {
    let env = test_env!();
    env.create_topics(&[env.topic(Topic::OrderDetails)]).await;
    let (one, one_url) = start_orders_process(&env.service_vars()).await;
    let (_two, two_url) = start_orders_process(&env.service_vars()).await;
    let order = order_body(11, "59.00");

    let (status, first) = post(&one_url, &order).await;
    assert_eq!(status, 200, "{first}");
    // The other instance learns of it from order_details, not from its peer.
    scrape_until(
        &format!("{two_url}/metrics"),
        Duration::from_secs(30),
        |text| text.lines().any(|line| line == "flatpack_orders_known 1"),
    )
    .await;
    let (status, at_two) = post(&two_url, &order).await;
    assert_eq!(status, 200, "{at_two}");
    assert_eq!(at_two, first);
    let mut other = order.clone();
    other["user_email"] = json!("bob@example.com");
    let (status, answer) = post(&two_url, &other).await;
    assert_order_id_used(status, &answer);

    one.kill();
    let (_one, one_url) = start_orders_process(&env.service_vars()).await;
    let (status, after_kill) = post(&one_url, &order).await;
    assert_eq!(status, 200, "{after_kill}");
    assert_eq!(after_kill, first);

    let mut reader = env.reader(&env.topic(Topic::OrderDetails));
    let records = reader.read_at_least(1, Duration::from_secs(30));
    assert_eq!(records.len(), 1, "written once");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_on_its_index_reads_only_the_orders_accepted_since_and_still_knows_every_one() {
    let env = test_env!();
    let topic = env.topic(Topic::OrderDetails);
    env.create_topics(std::slice::from_ref(&topic)).await;
    let store_dir = std::env::temp_dir().join(format!("{}orders-index", env.prefix));
    let mut vars = env.service_vars();
    vars.push(("FLATPACK_STORE_DIR".into(), store_dir.display().to_string()));
    vars.push(("ORDERS_INSTANCE_ID".into(), "orders-7".into()));
    let (orders, url) = start_orders_process(&vars).await;
    let mut first = Vec::new();
    for id in 1..=5 {
        let (status, answer) = post(&url, &order_body(id, "10.00")).await;
        assert_eq!(status, 200, "{answer}");
        first.push(answer);
    }
    // Read back from order_details into the index.
    scrape_until(&format!("{url}/metrics"), Duration::from_secs(30), |text| {
        text.lines().any(|line| line == "flatpack_orders_known 5")
    })
    .await;
    assert!(orders.terminate(Duration::from_secs(30)).success());

    // An order another instance took while this one was stopped.
    let mut sixth = order_body(6, "12.00");
    sixth["time"] = json!(1_700_000_000.5);
    env.produce(&topic, "6", sixth.to_string().as_bytes()).await;
    let (orders, url) = start_orders_process(&vars).await;
    let metrics = scrape_until(&format!("{url}/metrics"), Duration::from_secs(30), |text| {
        text.lines().any(|line| line == "flatpack_orders_known 6")
    })
    .await;
    let restored = format!("flatpack_state_restored_total{{changelog=\"{topic}\"}} 1");
    assert!(
        metrics.lines().any(|line| line == restored),
        "the restart read the one order written since, not the five before ({restored}):\n{metrics}"
    );
    for (id, first) in (1..=5).zip(&first) {
        let (status, again) = post(&url, &order_body(id, "10.00")).await;
        assert_eq!((status, &again), (200, first));
    }
    let (status, answer) = post(&url, &order_body(3, "11.00")).await;
    assert_order_id_used(status, &answer);
    let (status, answer) = post(&url, &order_body(6, "13.00")).await;
    assert_order_id_used(status, &answer);
    let (status, answer) = post(&url, &order_body(6, "12.00")).await;
    assert_eq!((status, &answer["time"]), (200, &json!(1_700_000_000.5)));

    let mut reader = env.reader(&topic);
    let records = reader.read_at_least(6, Duration::from_secs(30));
    assert_eq!(records.len(), 6, "each order written once");
    assert!(orders.terminate(Duration::from_secs(30)).success());
    assert!(store_dir.join("orders-accepted-orders-7.redb").is_file());
    let _ = std::fs::remove_dir_all(&store_dir);
    env.cleanup().await;
}
