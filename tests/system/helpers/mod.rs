//! What every system test needs: a broker, its own topic namespace, the services running
//! against it, and a way to read what they wrote.

pub mod broker;
pub mod jaeger;
pub mod mailpit;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use common::kafka::{base_config, ensure_topics};
use common::{KafkaSettings, Settings};
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A real component a test needs is missing: under `CI=true` the test fails; elsewhere it is
/// skipped, with a message written past the test harness's output capture so that it shows
/// even for a "passing" test.
pub fn missing(component: &str, why: &str, hint: &str) {
    use std::io::Write;
    assert!(
        !broker::is_ci(),
        "no {component} for the system tests under CI=true: {why}"
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED: no {component}: {why}\n*** {hint}\n"
    );
}

/// Partitions of every test topic: more than one, so ordering and rebalancing are real.
pub const TEST_PARTITIONS: i32 = 3;

/// One test's world: the broker and a topic/group namespace nobody else uses.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub kafka: KafkaSettings,
    pub prefix: String,
}

/// A fresh namespace on the run's broker, or `None` when the test must be skipped (see
/// [`broker::bootstrap_servers`]).
pub async fn test_env() -> Option<TestEnv> {
    let servers = broker::bootstrap_servers().await?;
    Some(TestEnv::on(&servers, 1))
}

fn vars_for(servers: &str, prefix: &str, replication: i32) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS".into(), servers.into()),
        ("FLATPACK_TOPIC_PREFIX".into(), prefix.into()),
        (
            "FLATPACK_TOPIC_PARTITIONS".into(),
            TEST_PARTITIONS.to_string(),
        ),
        (
            "FLATPACK_TOPIC_REPLICATION_FACTOR".into(),
            replication.to_string(),
        ),
    ]
}

impl TestEnv {
    /// A fresh namespace on the brokers at `servers`, whose topics get `replication`
    /// replicas.
    pub fn on(servers: &str, replication: i32) -> Self {
        let prefix = format!("t{:08x}_", rand::random::<u32>());
        TestEnv {
            kafka: KafkaSettings::from_vars(vars_for(servers, &prefix, replication))
                .expect("test settings"),
            prefix,
        }
    }

    /// The environment a service process of this test runs with.
    pub fn service_vars(&self) -> Vec<(String, String)> {
        vars_for(
            &self.kafka.bootstrap_servers,
            &self.prefix,
            self.kafka.replication_factor,
        )
    }

    pub fn topic(&self, topic: common::Topic) -> String {
        self.kafka.topics().name(topic)
    }

    pub fn dlq(&self, topic: common::Topic) -> String {
        self.kafka.topics().dlq(topic)
    }

    /// Creates topics ahead of the services (so readers can subscribe before writers start).
    pub async fn create_topics(&self, names: &[String]) {
        ensure_topics(&self.kafka, names)
            .await
            .expect("creating test topics");
    }

    /// Deletes every topic of this namespace.
    pub async fn cleanup(&self) {
        let admin: AdminClient<DefaultClientContext> =
            base_config(&self.kafka).create().expect("admin client");
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("cluster metadata");
        let ours: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|name| name.starts_with(&self.prefix))
            .collect();
        let names: Vec<&str> = ours.iter().map(String::as_str).collect();
        if !names.is_empty() {
            let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
        }
    }

    /// Deletes every record of `topic` now on it, as retention does to old ones.
    pub async fn delete_all_records(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> =
            base_config(&self.kafka).create().expect("admin client");
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let mut offsets = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            offsets
                .add_partition_offset(topic, partition.id(), Offset::End)
                .expect("a partition offset");
        }
        admin
            .delete_records(&offsets, &AdminOptions::new())
            .await
            .expect("deleting the records");
    }

    /// The configuration of `topic` that was set on it, rather than left to the broker's
    /// defaults.
    pub async fn topic_overrides(&self, topic: &str) -> BTreeMap<String, String> {
        let admin: AdminClient<DefaultClientContext> =
            base_config(&self.kafka).create().expect("admin client");
        let resources = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .expect("describing the topic's configuration");
        let resource = resources
            .into_iter()
            .next()
            .expect("one resource described")
            .expect("the topic's configuration");
        resource
            .entries
            .into_iter()
            .filter(|entry| entry.source == ConfigSource::DynamicTopic)
            .filter_map(|entry| Some((entry.name, entry.value?)))
            .collect()
    }

    /// A plain producer for writing test input straight to a topic.
    pub fn producer(&self) -> FutureProducer {
        base_config(&self.kafka)
            .set("enable.idempotence", "true")
            .create()
            .expect("test producer")
    }

    pub async fn produce(&self, topic: &str, key: &str, payload: &[u8]) {
        self.producer()
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .expect("producing test input");
    }

    /// A reader of `topic` from its beginning, seeing only committed messages.
    pub fn reader(&self, topic: &str) -> TopicReader {
        TopicReader::new(&self.kafka, topic)
    }
}

impl TestEnv {
    /// Joins consumer group `group` of this namespace as static member `instance` (its
    /// `group.instance.id` as the service sets it), as a
    /// second process started with the same instance id would, and returns once the group
    /// gave it partitions of `topic`. It then goes away without leaving the group: the
    /// member it replaced is fenced (a fatal error for that consumer) and must join again.
    pub fn usurp_static_member(&self, group: &str, instance: &str, topic: &str) {
        let topics = self.kafka.topics();
        let consumer: BaseConsumer = base_config(&self.kafka)
            .set("group.id", topics.scoped(group))
            .set("group.instance.id", instance)
            .create()
            .expect("usurping consumer");
        consumer.subscribe(&[topic]).expect("subscribing");
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumer.assignment().map_or(0, |a| a.count()) == 0 {
            assert!(
                Instant::now() < deadline,
                "the group gave {instance} no partition within 60 s"
            );
            let _ = consumer.poll(Duration::from_millis(100));
        }
    }
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// When the producer wrote it (milliseconds since the epoch); the fault tests time the
    /// stages' catch-up with it.
    #[allow(dead_code)]
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("record is JSON")
    }
}

/// Reads a whole topic, from the beginning, as a `read_committed` consumer outside any group.
pub struct TopicReader {
    consumer: BaseConsumer,
    pub records: Vec<Record>,
}

impl TopicReader {
    fn new(settings: &KafkaSettings, topic: &str) -> Self {
        let consumer: BaseConsumer = base_config(settings)
            .set("group.id", format!("reader-{}", rand::random::<u32>()))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .expect("test reader");
        // The service that creates the topic may still be starting: wait for it a while.
        let until = Instant::now() + Duration::from_secs(30);
        let mut assignment = TopicPartitionList::new();
        while assignment.count() == 0 {
            assert!(
                Instant::now() < until,
                "topic {topic} did not appear within 30 s"
            );
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("topic metadata");
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                assignment
                    .add_partition_offset(topic, partition.id(), Offset::Beginning)
                    .expect("assignment");
            }
            if assignment.count() == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        consumer.assign(&assignment).expect("assigning partitions");
        Self {
            consumer,
            records: Vec::new(),
        }
    }

    fn poll_once(&mut self, timeout: Duration) -> bool {
        match self.consumer.poll(timeout) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value =
                                    h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_owned(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.records.push(Record {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                    timestamp_ms: message.timestamp().to_millis(),
                });
                true
            }
            Some(Err(err)) => panic!("reading test output: {err}"),
            None => false,
        }
    }

    /// Reads until `done(records)` holds, then keeps reading until nothing new arrives for
    /// `settle` (so that duplicates behind the last expected message are seen too). Panics
    /// with `what` if `done` does not hold within `deadline`.
    pub fn read_until(
        &mut self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[Record]) -> bool,
    ) -> &[Record] {
        const SETTLE: Duration = Duration::from_millis(1500);
        let until = Instant::now() + deadline;
        while !done(&self.records) {
            assert!(
                Instant::now() < until,
                "timed out after {deadline:?} waiting for {what}; read {} records",
                self.records.len()
            );
            self.poll_once(Duration::from_millis(100));
        }
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < SETTLE {
            if self.poll_once(Duration::from_millis(100)) {
                quiet_since = Instant::now();
            }
        }
        &self.records
    }

    /// Reads until at least `count` records are in, and returns at once.
    pub fn wait_for(&mut self, count: usize, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.records.len() < count {
            assert!(
                Instant::now() < until,
                "timed out after {deadline:?} waiting for {count} records; read {}",
                self.records.len()
            );
            self.poll_once(Duration::from_millis(100));
        }
    }

    /// Reads until `count` records are in (and the topic settled).
    pub fn read_at_least(&mut self, count: usize, deadline: Duration) -> &[Record] {
        self.read_until(&format!("{count} records"), deadline, |r| r.len() >= count)
    }
}

/// An orders API running in this process.
pub struct OrdersApi {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the orders API on a free port and waits until it serves.
pub async fn spawn_orders(env: &TestEnv) -> OrdersApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let settings: orders::OrdersSettings =
        common::Settings::from_vars(Vec::<(String, String)>::new()).expect("orders defaults");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(orders::run(env.kafka.clone(), settings, listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{url}/readyz")).send().await
            && response.status().is_success()
        {
            break;
        }
        assert!(!task.is_finished(), "orders API stopped during start-up");
        assert!(Instant::now() < until, "orders API not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    OrdersApi {
        url,
        stop: Some(stop),
        task,
    }
}

impl OrdersApi {
    /// Shuts the API down gracefully and returns how `run` ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("orders task panicked")
    }
}

/// Posts `body` to the orders API at `url`; returns the status and the JSON answer.
pub async fn post_order(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = client
        .post(format!("{url}/order"))
        .json(body)
        .send()
        .await
        .expect("POST /order");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// The orders API as its own process on a free port with `vars`, once it is ready; returns
/// it and its URL.
pub async fn start_orders_process(vars: &[(String, String)]) -> (ServiceProcess, String) {
    let addr = free_addr();
    let mut vars = vars.to_vec();
    vars.push(("ORDERS_HTTP_ADDR".into(), addr.clone()));
    let orders = ServiceProcess::start("orders", &vars);
    let url = format!("http://{addr}");
    scrape_until(&format!("{url}/readyz"), Duration::from_secs(60), |_| true).await;
    (orders, url)
}

/// A transactions service running in this process.
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the transactions service in this process with the default payment rules.
pub fn spawn_transactions(env: &TestEnv, instance: &str) -> InProcess {
    let settings = <transactions::TransactionsSettings as common::Settings>::from_vars(vec![
        ("TRANSACTIONS_INSTANCE_ID".to_string(), instance.to_string()),
        ("TRANSACTIONS_OPS_ADDR".to_string(), ANY_PORT.to_string()),
    ])
    .expect("transactions settings");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(transactions::run(
        env.kafka.clone(),
        settings,
        transactions::RulesCheck::default(),
        async {
            let _ = stopped.await;
        },
    ));
    InProcess {
        stop: Some(stop),
        task,
    }
}

/// Starts the email service in this process with the given settings (SMTP_HOST, ...).
pub fn spawn_email(env: &TestEnv, mut vars: Vec<(String, String)>) -> InProcess {
    vars.push(("EMAIL_OPS_ADDR".to_string(), ANY_PORT.to_string()));
    let settings = email::EmailSettings::from_vars(vars).expect("email settings");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(email::run(env.kafka.clone(), settings, async {
        let _ = stopped.await;
    }));
    InProcess {
        stop: Some(stop),
        task,
    }
}

impl InProcess {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("service task panicked")
    }
}

/// A service running as its own process (the binary cargo built), for tests that kill it.
pub struct ServiceProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Path of a service binary: in `FLATPACK_BIN_DIR` when set (to run the tests against other
/// builds), else next to this test binary (`target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FLATPACK_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(path.exists(), "{} is missing", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the service binaries first (`cargo build --workspace --bins`, which scripts/test.sh does)",
        path.display()
    );
    path
}

/// The address of a server whose port does not matter to the test: any free one.
pub const ANY_PORT: &str = "127.0.0.1:0";

impl ServiceProcess {
    /// Starts service `name` with `vars`; its metrics and health server (when it has one of
    /// its own) listens on any free port unless `vars` say where.
    pub fn start(name: &'static str, vars: &[(String, String)]) -> Self {
        let ops_var = format!("{}_OPS_ADDR", name.to_uppercase());
        let ops_default = (!vars.iter().any(|(k, _)| *k == ops_var)).then_some((ops_var, ANY_PORT));
        let log = std::env::temp_dir().join(format!(
            "flatpack-test-{name}-{}.log",
            rand::random::<u32>()
        ));
        let file = std::fs::File::create(&log).expect("service log file");
        eprintln!("{name} logs to {}", log.display());
        let child = Command::new(binary(name))
            .envs(vars.iter().cloned())
            .envs(ops_default)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("service log file"))
            .stderr(file)
            .spawn()
            .expect("starting the service binary");
        Self { name, child, log }
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the killed process");
    }

    /// SIGTERM, then wait for the process to exit on its own.
    pub fn terminate(mut self, deadline: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("sending SIGTERM");
        assert!(status.success(), "kill -TERM failed");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for exit") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "{} did not exit within {deadline:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("polling the process")
            .is_none()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the service said: CI keeps the test's output, not /tmp.
        if std::thread::panicking() {
            const TAIL: usize = 80;
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- last {} lines of {} ({}) ---",
                TAIL.min(lines.len()),
                self.name,
                self.log.display()
            );
            for line in &lines[lines.len().saturating_sub(TAIL)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A valid order request body for `order_id`.
pub fn order_body(order_id: u64, price: &str) -> serde_json::Value {
    serde_json::json!({
        "user_id": 7,
        "order_id": order_id,
        "user_email": "anna@example.com",
        "order_details": { "price": serde_json::from_str::<serde_json::Value>(price).expect("price"), "item": "BILLY bookcase" }
    })
}

/// Posts `bodies` to the API with `concurrency` requests in flight; returns the statuses.
///
/// Does what the API asks of a client: a `503` (the broker did not acknowledge the order)
/// is sent again after its `Retry-After`, up to [`POST_ATTEMPTS`] times; the same order is
/// decided once however often it is sent.
pub async fn post_all(url: &str, bodies: Vec<serde_json::Value>, concurrency: usize) -> Vec<u16> {
    use futures::StreamExt;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    futures::stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            async move {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let response = client
                        .post(format!("{url}/order"))
                        .json(&body)
                        .send()
                        .await
                        .expect("POST /order");
                    let status = response.status();
                    if status != reqwest::StatusCode::SERVICE_UNAVAILABLE
                        || attempts == POST_ATTEMPTS
                    {
                        return status.as_u16();
                    }
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(retry_after)).await;
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// How often [`post_all`] sends one order that keeps being answered `503`.
pub const POST_ATTEMPTS: u32 = 5;

/// Starts the analytics service in this process.
pub fn spawn_analytics(env: &TestEnv) -> InProcess {
    let vars = vec![("ANALYTICS_OPS_ADDR".to_string(), ANY_PORT.to_string())];
    let settings = analytics::AnalyticsSettings::from_vars(vars).expect("analytics settings");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(analytics::run(env.kafka.clone(), settings, async {
        let _ = stopped.await;
    }));
    InProcess {
        stop: Some(stop),
        task,
    }
}

/// A port free right now, for a process that must listen where the test can find it.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    format!(
        "127.0.0.1:{}",
        listener.local_addr().expect("address").port()
    )
}

/// GET `url`: its status and body; status 0 when it could not be asked.
pub async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Scrapes `url` until `done` holds for its text; panics with the last text after `deadline`.
pub async fn scrape_until(url: &str, deadline: Duration, done: impl Fn(&str) -> bool) -> String {
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
