//! Container tests: the repository's compose files run for real in a container engine, as
//! a user with Docker runs them (`docker compose up --build`), and checked from the host the
//! way that user would: orders posted to `localhost:5002`, the e-mails in Mailpit's API, the
//! figures in the dashboard's API, each order's trace in Jaeger's, every service scraped by
//! Prometheus.
//!
//! Needs `DOCKER_HOST` naming a Docker API and the stand-in images on machines that cannot
//! pull (`scripts/containers.py`; `scripts/test.sh` runs this target with both). Not part
//! of a plain `cargo test` (`test = false` in Cargo.toml): run it with
//! `cargo test --test containers`. The tests publish the compose files' fixed ports, so
//! they take turns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::{Project, eventually};
use serde_json::{Value, json};

/// The tests publish the same host ports: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ORDERS: &str = "http://localhost:5002";
const DASHBOARD: &str = "http://localhost:8000";
const MAILPIT: &str = "http://localhost:8025";
const JAEGER: &str = "http://localhost:16686";
const PROMETHEUS: &str = "http://localhost:9090";

/// The first `up --build` builds the toolchain layers and five release binaries.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);
/// `up -d` waits for the brokers' healthchecks (the JVMs start on two cores).
const UP_LIMIT: Duration = Duration::from_secs(8 * 60);
const DOWN_LIMIT: Duration = Duration::from_secs(3 * 60);
/// From an accepted POST to the order decided, e-mailed and counted.
const PIPELINE_LIMIT: Duration = Duration::from_secs(180);

const SERVICES: [&str; 5] = ["orders", "transactions", "analytics", "email", "dashboard"];

/// One order of a test, and what the payment rules will decide for it.
#[derive(Debug, Clone)]
struct TestOrder {
    id: String,
    email: String,
    price: u32,
    declined: bool,
}

impl TestOrder {
    fn batch(run: &str, count: usize, every_nth_declined: usize) -> Vec<TestOrder> {
        (1..=count)
            .map(|i| TestOrder {
                id: format!("{run}-{i}"),
                email: format!("c{i}-{run}@example.com"),
                price: 100 + u32::try_from(i).unwrap(),
                declined: i % every_nth_declined == 0,
            })
            .collect()
    }

    fn body(&self) -> Value {
        let mut details = json!({"price": self.price, "item": "BILLY bookcase"});
        if self.declined {
            details["payment_token"] = json!("tok_declined");
        }
        json!({"user_id": 7, "order_id": self.id, "user_email": self.email, "order_details": details})
    }
}

fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("ct{ms}")
}

/// Brings a project down with its volumes even when the test panics.
struct Down(Project);

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last log lines of {}:\n{}",
                self.0.file,
                self.0.logs_tail()
            );
        }
        let _ = std::panic::catch_unwind(|| {
            self.0.compose(
                &["down", "-v", "--remove-orphans", "--timeout", "30"],
                DOWN_LIMIT,
            )
        });
    }
}

/// `down -v` from a clean start, then `up --build -d`; the returned guard takes it down.
fn up(project: &Project) -> Down {
    project.compose(&["down", "-v", "--remove-orphans"], DOWN_LIMIT);
    assert_eq!(
        project.leftovers(),
        BTreeSet::new(),
        "{} left something behind before the test",
        project.name
    );
    let guard = Down(project.clone());
    project.compose(&["up", "--build", "-d"], BUILD_LIMIT.max(UP_LIMIT));
    guard
}

async fn wait_ready(client: &reqwest::Client) {
    eventually(
        "the orders API's /readyz to answer 200",
        UP_LIMIT,
        || async {
            let r = client.get(format!("{ORDERS}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
}

/// POSTs an order until it is accepted (200), retrying a 503 or a refused connection as a
/// client should; panics on any other answer or after `limit`. The client's side of the
/// order is a sampled trace (`traceparent` flag `01`), so that the services, which sample
/// only a share of the traces that start with them, trace this one whole.
async fn post_until_accepted(client: &reqwest::Client, order: &TestOrder, limit: Duration) {
    let traceparent = format!(
        "00-{:032x}-{:016x}-01",
        rand::random::<u128>() | 1,
        rand::random::<u64>() | 1
    );
    eventually(
        &format!("order {} to be accepted", order.id),
        limit,
        || async {
            let r = client
                .post(format!("{ORDERS}/order"))
                .header("traceparent", &traceparent)
                .json(&order.body())
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .ok()?;
            let status = r.status();
            if status.is_success() {
                return Some(());
            }
            assert!(
                status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                "order {}: {status} {}",
                order.id,
                r.text().await.unwrap_or_default()
            );
            None
        },
    )
    .await;
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    let r = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Every order decided as the payment rules say, its e-mail reported sent, exactly one
/// e-mail per order in Mailpit, and the analytics totals counting each once.
async fn assert_all_through(client: &reqwest::Client, orders: &[TestOrder]) {
    for order in orders {
        let want = if order.declined {
            "declined"
        } else {
            "confirmed"
        };
        let progress = eventually(
            &format!("order {} decided and e-mailed on the dashboard", order.id),
            PIPELINE_LIMIT,
            || async {
                let p = get_json(client, &format!("{DASHBOARD}/api/orders/{}", order.id)).await?;
                (p["status"] != "pending" && p["email_sent"].is_boolean()).then_some(p)
            },
        )
        .await;
        assert_eq!(progress["status"], want, "order {}: {progress}", order.id);
        assert_eq!(
            progress["email_sent"], true,
            "order {}: {progress}",
            order.id
        );
    }

    let want: BTreeMap<String, usize> = orders.iter().map(|o| (o.email.clone(), 1)).collect();
    let got = eventually(
        "one e-mail per order in Mailpit",
        PIPELINE_LIMIT,
        || async {
            let page = get_json(client, &format!("{MAILPIT}/api/v1/messages?limit=1000")).await?;
            let mut got = BTreeMap::<String, usize>::new();
            for m in page["messages"].as_array()? {
                for to in m["To"].as_array()? {
                    *got.entry(to["Address"].as_str()?.to_owned()).or_default() += 1;
                }
            }
            (got.values().sum::<usize>() >= orders.len()).then_some(got)
        },
    )
    .await;
    assert_eq!(got, want, "Mailpit's recipients and their message counts");

    let confirmed: Vec<&TestOrder> = orders.iter().filter(|o| !o.declined).collect();
    let revenue: u32 = confirmed.iter().map(|o| o.price).sum();
    let declined = orders.len() - confirmed.len();
    let all_time = eventually(
        "the analytics totals of every order",
        PIPELINE_LIMIT,
        || async {
            let t = get_json(client, &format!("{DASHBOARD}/api/totals")).await?;
            let a = t["all_time"].clone();
            let seen = a["orders"].as_u64()? + a["declined"].as_u64()?;
            (seen >= orders.len() as u64).then_some(a)
        },
    )
    .await;
    assert_eq!(
        (
            all_time["orders"].as_u64(),
            all_time["declined"].as_u64(),
            all_time["revenue"].as_str()
        ),
        (
            Some(confirmed.len() as u64),
            Some(declined as u64),
            Some(format!("{revenue}.00").as_str())
        ),
        "all-time totals: {all_time}"
    );
}

/// Prometheus scrapes every service, and each answers.
async fn assert_scraped(client: &reqwest::Client) {
    let want: BTreeSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    eventually(
        "Prometheus to scrape every service successfully",
        UP_LIMIT,
        || async {
            let targets = get_json(client, &format!("{PROMETHEUS}/api/v1/targets")).await?;
            let up: BTreeSet<String> = targets["data"]["activeTargets"]
                .as_array()?
                .iter()
                .filter(|t| t["health"] == "up")
                .filter_map(|t| t["labels"]["service"].as_str().map(str::to_owned))
                .collect();
            (up == want).then_some(())
        },
    )
    .await;
    // And what it scraped is flatpack's: the orders the test posted were counted.
    eventually(
        "flatpack_orders_total in Prometheus",
        PIPELINE_LIMIT,
        || async {
            let url = format!("{PROMETHEUS}/api/v1/query?query=flatpack_orders_total");
            let answer = get_json(client, &url).await?;
            (!answer["data"]["result"].as_array()?.is_empty()).then_some(())
        },
    )
    .await;
}

/// Jaeger holds the trace of `order`: spans of all four services that handle an order.
async fn assert_traced(client: &reqwest::Client, order: &TestOrder) {
    eventually(
        "one trace through orders, transactions, email and analytics in Jaeger",
        PIPELINE_LIMIT,
        || async {
            let url = format!("{JAEGER}/api/traces?service=orders&limit=100");
            let answer = get_json(client, &url).await?;
            answer["data"].as_array()?.iter().find_map(|trace| {
                let tagged = trace["spans"].as_array()?.iter().any(|span| {
                    span["tags"].as_array().into_iter().flatten().any(|tag| {
                        tag["key"] == "messaging.kafka.message.key"
                            && tag["value"] == order.id.as_str()
                    })
                });
                let services: BTreeSet<&str> = trace["processes"]
                    .as_object()?
                    .values()
                    .filter_map(|p| p["serviceName"].as_str())
                    .collect();
                let whole = ["orders", "transactions", "email", "analytics"]
                    .iter()
                    .all(|s| services.contains(s));
                (tagged && whole).then_some(())
            })
        },
    )
    .await;
}

/// Every container with a healthcheck is healthy, and those are exactly `want`.
async fn assert_healthy(project: &Project, want: &[&str]) {
    let (healthy, all) = eventually(
        "every container with a healthcheck to be healthy",
        UP_LIMIT,
        || async {
            let containers = project.containers();
            let checked: Vec<&Value> = containers
                .iter()
                .filter(|c| c["Health"].as_str().is_some_and(|h| !h.is_empty()))
                .collect();
            let names: BTreeSet<String> = checked
                .iter()
                .map(|c| c["Service"].as_str().unwrap_or_default().to_owned())
                .collect();
            let all_healthy = checked.iter().all(|c| c["Health"] == "healthy");
            all_healthy.then(|| (names, containers.clone()))
        },
    )
    .await;
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        healthy, want,
        "services with a healthcheck; containers: {all:?}"
    );
    for c in &all {
        assert_eq!(c["State"], "running", "container not running: {c}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_up_builds_the_services_and_serves_orders_end_to_end() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let project = Project {
        file: "docker-compose.yml",
        name: "flatpack",
    };
    let guard = up(&project);
    let client = reqwest::Client::new();
    wait_ready(&client).await;

    let orders = TestOrder::batch(&run_id(), 12, 4);
    for order in &orders {
        post_until_accepted(&client, order, Duration::from_secs(60)).await;
    }
    assert_all_through(&client, &orders).await;
    assert_traced(&client, &orders[0]).await;
    assert_scraped(&client).await;

    assert_healthy(
        &project,
        &[
            "dashboard",
            "jaeger",
            "kafka",
            "mailpit",
            "orders",
            "prometheus",
        ],
    )
    .await;
    let running: BTreeSet<String> = project
        .containers()
        .iter()
        .map(|c| c["Service"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> = ["kafka", "mailpit", "jaeger", "prometheus"]
        .into_iter()
        .chain(SERVICES)
        .map(str::to_owned)
        .collect();
    assert_eq!(
        running, want,
        "the containers of docker-compose.yml (Kafka UI is behind a profile)"
    );
    for service in SERVICES {
        assert_eq!(
            project.uid_of(service),
            "10001",
            "uid of {service}'s process 1"
        );
    }

    drop(guard);
    assert_eq!(
        project.leftovers(),
        BTreeSet::new(),
        "`docker compose down -v` left these behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_loses_no_accepted_order_when_a_broker_is_killed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let project = Project {
        file: "docker-compose-cluster.yml",
        name: "flatpack-cluster",
    };
    let guard = up(&project);
    let client = reqwest::Client::new();
    wait_ready(&client).await;
    assert_healthy(
        &project,
        &[
            "dashboard",
            "jaeger",
            "kafka",
            "kafka-2",
            "kafka-3",
            "mailpit",
            "orders",
            "prometheus",
        ],
    )
    .await;

    let orders = TestOrder::batch(&run_id(), 40, 5);
    let kill_after = 15;
    for (i, order) in orders.iter().enumerate() {
        if i == kill_after {
            // The first broker: the controller quorum's first voter, and leader of some
            // partitions of every topic.
            project.compose(&["kill", "kafka"], Duration::from_secs(60));
            eprintln!("killed broker container `kafka` after {kill_after} accepted orders");
        }
        post_until_accepted(&client, order, Duration::from_secs(120)).await;
    }
    let killed = project
        .containers()
        .into_iter()
        .find(|c| c["Service"] == "kafka")
        .map(|c| c["State"].clone());
    eprintln!(
        "all {} orders accepted; the killed broker's state now: {killed:?}",
        orders.len()
    );
    assert_all_through(&client, &orders).await;

    drop(guard);
    assert_eq!(
        project.leftovers(),
        BTreeSet::new(),
        "`docker compose down -v` left these behind"
    );
}
