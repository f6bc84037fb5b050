//! The dashboard: its view rebuilt from the topics, its JSON API, the live page in a real
//! headless Chromium, and a clean exit on SIGTERM.

#[path = "helpers/browser.rs"]
mod browser;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::events::{now_epoch_seconds, utc_day};
use common::{Settings, Topic};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::helpers::{ServiceProcess, TestEnv, spawn_orders, spawn_transactions};
use crate::test_env;

/// A dashboard running in this process.
pub(crate) struct Dashboard {
    pub(crate) url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts a dashboard on a free port and waits until it is ready (caught up).
pub(crate) async fn spawn_dashboard(env: &TestEnv) -> Dashboard {
    spawn_dashboard_with(env, Vec::new()).await
}

/// [`spawn_dashboard`] with settings from `vars`.
async fn spawn_dashboard_with(env: &TestEnv, vars: Vec<(String, String)>) -> Dashboard {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let settings = dashboard::DashboardSettings::from_vars(vars).unwrap();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(dashboard::run(
        env.kafka.clone(),
        settings,
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    wait_ready(&url, || {
        assert!(!task.is_finished(), "dashboard stopped during start-up")
    })
    .await;
    Dashboard {
        url,
        stop: Some(stop),
        task,
    }
}

async fn wait_ready(url: &str, still_running: impl Fn()) {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{url}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        still_running();
        assert!(Instant::now() < until, "dashboard not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Dashboard {
    /// A test that failed still stops the dashboard: its readers run on blocking threads,
    /// which the test's runtime waits for as it shuts down.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Dashboard {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("dashboard stops within 30 s of shutdown")
            .expect("dashboard task panicked")
            .expect("dashboard run ended with an error");
    }
}

fn order(order_id: Value, time: f64, details: Value) -> Value {
    json!({
        "user_id": 7, "order_id": order_id, "user_email": "anna@example.com",
        "order_details": details, "time": time
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        base[key] = value.clone();
    }
    base
}

/// One analytics message as the analytics service writes it.
fn analytics_result(seq: u64, day: &str, total: &str, orders: u64, declined: u64) -> Value {
    json!({
        "total_revenue": total.parse::<f64>().unwrap(), "total_orders_count": orders,
        "total_revenue_exact": total, "total_declined_count": declined,
        "day": day, "day_revenue": total.parse::<f64>().unwrap(), "day_orders_count": orders,
        "day_declined_count": declined, "seq": seq, "schema": 1
    })
}

async fn produce_json(env: &TestEnv, topic: Topic, key: &str, value: &Value) {
    env.produce(&env.topic(topic), key, &serde_json::to_vec(value).unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_api_shows_each_orders_progress_and_the_totals_and_a_restart_rebuilds_them() {
    let env = test_env!();
    let names: Vec<String> = Topic::ALL.iter().map(|t| env.topic(*t)).collect();
    env.create_topics(&names).await;
    let placed = now_epoch_seconds() - 10.0;
    let today = utc_day(now_epoch_seconds());

    // Arrange: three orders at three stages, a message nobody can read, two analytics results.
    let emailed = order(
        json!(1001),
        placed,
        json!({"price": 349.5, "item": "BILLY"}),
    );
    let declined = order(json!(1002), placed + 1.0, json!({"price": 20000}));
    let waiting = order(json!("o-3"), placed + 2.0, json!({"price": "12.00"}));
    for o in [&emailed, &declined, &waiting] {
        let key = o["order_id"].to_string().trim_matches('"').to_owned();
        produce_json(&env, Topic::OrderDetails, &key, o).await;
    }
    env.produce(&env.topic(Topic::OrderDetails), "junk", b"not json at all")
        .await;
    let decision = with(
        emailed.clone(),
        json!({"status": "confirmed", "decided_at": placed + 0.5}),
    );
    produce_json(&env, Topic::OrderConfirmed, "1001", &decision).await;
    let refusal = with(
        declined.clone(),
        json!({"status": "declined", "reason": "amount 20000.00 exceeds the limit of 10000.00", "decided_at": placed + 1.25}),
    );
    produce_json(&env, Topic::OrderConfirmed, "1002", &refusal).await;
    let sent = with(
        emailed.clone(),
        json!({"status": true, "kind": "confirmation", "sent_at": placed + 2.0}),
    );
    produce_json(&env, Topic::OrderEmailSent, "1001", &sent).await;
    let older = analytics_result(1, &today, "349.50", 1, 0);
    let current = analytics_result(2, &today, "349.50", 1, 1);
    produce_json(&env, Topic::AnalyticsResult, &today, &older).await;
    produce_json(&env, Topic::AnalyticsResult, &today, &current).await;

    // Act: a dashboard started after all of it; ready means it has read everything.
    let first = spawn_dashboard(&env).await;

    // Assert: what a support person would look up.
    let (status, order) = first.get("/api/orders/1001").await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["order_id"], json!(1001));
    assert_eq!(order["stage"], json!("emailed"));
    assert_eq!(order["status"], json!("confirmed"));
    assert_eq!(order["decision_secs"], json!(0.5));
    assert_eq!(order["email_sent"], json!(true));
    assert_eq!(order["email_kind"], json!("confirmation"));
    assert_eq!(order["email_secs"], json!(1.5));
    assert_eq!(order["user_email"], json!("a***@example.com"));
    assert!(
        !order.to_string().contains("anna@"),
        "the full e-mail address is never shown"
    );

    let (_, order) = first.get("/api/orders/1002").await;
    assert_eq!(order["stage"], json!("decided"));
    assert_eq!(order["status"], json!("declined"));
    assert_eq!(
        order["reason"],
        json!("amount 20000.00 exceeds the limit of 10000.00")
    );
    assert_eq!(order["decision_secs"], json!(0.25));

    let (_, order) = first.get("/api/orders/o-3").await;
    assert_eq!(order["stage"], json!("placed"));
    assert_eq!(order["status"], json!("pending"));

    let (status, body) = first.get("/api/orders/4040").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");

    let (status, latest) = first.get("/api/orders?limit=2").await;
    assert_eq!(status, 200);
    let ids: Vec<&Value> = latest
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["order_id"])
        .collect();
    assert_eq!(ids, [&json!("o-3"), &json!(1002)], "newest first");
    let (status, _) = first.get("/api/orders?limit=zero").await;
    assert_eq!(status, 400);

    let (status, totals) = first.get("/api/totals").await;
    assert_eq!(status, 200);
    assert_eq!(
        totals["all_time"],
        json!({"orders": 1, "revenue": "349.50", "declined": 1, "seq": 2}),
        "the highest seq holds the totals"
    );
    assert_eq!(
        totals["today"],
        json!({"day": today, "orders": 1, "revenue": "349.50", "declined": 1})
    );
    assert_eq!(totals["pipeline"]["awaiting_decision"], json!(1));
    assert_eq!(totals["skipped_messages"], json!(1), "the junk was skipped");

    // A second dashboard, started later, rebuilds the same view from the topics.
    let second = spawn_dashboard(&env).await;
    assert_eq!(
        second.get("/api/orders?limit=100").await,
        first.get("/api/orders?limit=100").await
    );
    assert_eq!(
        second.get("/api/totals").await,
        first.get("/api/totals").await
    );

    first.stop().await;
    second.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_reads_only_as_many_of_the_latest_records_as_the_view_keeps_orders() {
    let env = test_env!();
    let names: Vec<String> = Topic::ALL.iter().map(|t| env.topic(*t)).collect();
    env.create_topics(&names).await;
    let placed = now_epoch_seconds() - 60.0;
    // All under one key, so in one partition in this order: a record nobody can read, then
    // eight orders.
    env.produce(&env.topic(Topic::OrderDetails), "k", b"not json at all")
        .await;
    for id in 1..=8 {
        let o = order(json!(id), placed + id as f64, json!({"price": 10}));
        produce_json(&env, Topic::OrderDetails, "k", &o).await;
    }

    let dashboard =
        spawn_dashboard_with(&env, vec![("DASHBOARD_MAX_ORDERS".into(), "5".into())]).await;
    let (_, totals) = dashboard.get("/api/totals").await;
    assert_eq!(
        totals["skipped_messages"],
        json!(0),
        "the unreadable record before the latest five is not read: {totals}"
    );
    assert_eq!(totals["pipeline"]["tracked"], json!(5), "{totals}");
    let (_, orders) = dashboard.get("/api/orders").await;
    let ids: Vec<&Value> = orders
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["order_id"])
        .collect();
    assert_eq!(ids, [&json!(8), &json!(7), &json!(6), &json!(5), &json!(4)]);
    dashboard.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_page_in_chromium_shows_a_new_order_live_and_customer_text_only_as_text() {
    let env = test_env!();
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let board = spawn_dashboard(&env).await;
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "dashboard-page");

    let page_response = reqwest::get(&board.url).await.unwrap();
    let csp = page_response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );

    let chrome = browser::HeadlessChromium::launch(&chromium).await;
    let page = chrome.open(&board.url).await;
    browser::wait_until(
        &page,
        "that it is live",
        Duration::from_secs(15),
        "document.getElementById('connection').textContent === 'live' && document.body.dataset.updates",
    )
    .await;
    let placed_before: String =
        browser::eval(&page, "document.getElementById('placed-today').textContent").await;
    assert_eq!(placed_before, "0");

    // A customer puts markup in a free-text field of the order.
    let attack = "<script>alert(1)</script>";
    let client = reqwest::Client::new();
    let post = |body: Value| {
        let client = client.clone();
        let url = format!("{}/order", api.url);
        async move {
            let status = client.post(url).json(&body).send().await.unwrap().status();
            assert_eq!(status, 200, "POST /order {body}");
        }
    };
    post(json!({
        "user_id": 7, "order_id": 7001, "user_email": "anna@example.com",
        "order_details": {"price": 129.99, "item": "POÄNG armchair", "note": attack}
    }))
    .await;

    // Without a reload, the row appears and moves on to its decision, and the figures move.
    browser::wait_until(
        &page,
        "order 7001 confirmed",
        Duration::from_secs(20),
        "[...document.querySelectorAll('#orders tr')].some(tr => tr.dataset.orderId === '7001' && tr.textContent.includes('confirmed'))",
    )
    .await;
    let placed_after: String =
        browser::eval(&page, "document.getElementById('placed-today').textContent").await;
    assert_eq!(placed_after, "1", "placed today went from 0 to 1");

    let today = utc_day(now_epoch_seconds());
    produce_json(
        &env,
        Topic::AnalyticsResult,
        &today,
        &analytics_result(1, &today, "129.99", 1, 0),
    )
    .await;
    browser::wait_until(
        &page,
        "the new totals",
        Duration::from_secs(15),
        "document.getElementById('all-revenue').textContent === '129.99' && document.getElementById('today-orders').textContent === '1'",
    )
    .await;

    // The markup is on the page as text, and nothing was injected.
    let note_shown: bool = browser::eval(
        &page,
        &format!(
            "[...document.querySelectorAll('#orders td.details')].some(td => td.textContent.includes({}))",
            json!(attack)
        ),
    )
    .await;
    assert!(note_shown, "the customer's text is shown literally");
    let scripts: Vec<String> = browser::eval(
        &page,
        "[...document.querySelectorAll('script')].map(s => s.src)",
    )
    .await;
    assert_eq!(scripts.len(), 1, "only the page's own script: {scripts:?}");
    assert!(scripts[0].ends_with("/app.js"), "{scripts:?}");
    let email_shown: String = browser::eval(
        &page,
        "document.querySelector('#orders tr[data-order-id=\"7001\"] td:nth-child(2)').textContent",
    )
    .await;
    assert_eq!(email_shown, "a***@example.com");

    // A few more orders, one declined, for a screenshot that shows the page at work.
    for (id, price, token) in [
        (7002, 59.0, "tok_ok"),
        (7003, 15.5, "tok_declined"),
        (7004, 899.0, "tok_ok"),
    ] {
        post(json!({
            "user_id": 8, "order_id": id, "user_email": "bo@example.org",
            "order_details": {"price": price, "item": "KALLAX shelf", "payment_token": token}
        }))
        .await;
    }
    browser::wait_until(
        &page,
        "four decided orders",
        Duration::from_secs(20),
        "[...document.querySelectorAll('#orders tr')].filter(tr => tr.dataset.stage === 'decided').length === 4",
    )
    .await;
    let details: String =
        browser::eval(&page, "document.querySelector('#orders').textContent").await;
    assert!(
        details.contains("KALLAX shelf") && !details.contains("tok_"),
        "order details are shown, payment tokens are not: {details}"
    );
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots/dashboard.png");
    browser::screenshot(&page, &shot).await;

    chrome.close().await;
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    board.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_process_exits_0_on_sigterm() {
    let env = test_env!();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut vars = env.service_vars();
    vars.push(("DASHBOARD_HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
    let mut process = ServiceProcess::start("dashboard", &vars);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, || {}).await;
    // An open live stream must not hold the shutdown up.
    let stream = reqwest::get(format!("{url}/api/events")).await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(process.is_running());

    let status = process.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(stream);
    env.cleanup().await;
}
