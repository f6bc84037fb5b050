//! The pipeline as processes, a steady stream of orders into it, and the exact check of what
//! came out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{AnalyticsResult, Topic};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::mailpit::Mailpit;
use crate::helpers::{Record, ServiceProcess, TestEnv, order_body};

/// How long each stage may take to finish every accepted order once the faults are over.
const DRAIN_DEADLINE: Duration = Duration::from_secs(240);

/// Milliseconds since the epoch: the clock of Kafka record timestamps.
pub fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("timestamp")
}

/// Writes past the test harness's output capture, so that the figures show for a passing
/// test too.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Every service of the pipeline, each a process of its own.
pub struct Pipeline {
    pub url: String,
    vars: HashMap<&'static str, Vec<(String, String)>>,
    running: Vec<(&'static str, ServiceProcess)>,
}

/// The services that consume, each killed in turn by the tests.
pub const CONSUMERS: [&str; 3] = ["transactions", "email", "analytics"];

impl Pipeline {
    /// Starts orders, transactions, email and analytics against `env`'s brokers and
    /// `mailpit`, and waits until the API is ready.
    pub async fn start(env: &TestEnv, mailpit: &Mailpit) -> Self {
        let pipeline = Self::launch(env, mailpit);
        pipeline.await_ready(Duration::from_secs(90)).await;
        pipeline
    }

    /// Starts the services without waiting for anything.
    pub fn launch(env: &TestEnv, mailpit: &Mailpit) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let with = |extra: Vec<(String, String)>| {
            let mut vars = env.service_vars();
            vars.extend(extra);
            vars
        };
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        // A consumer session shorter than the tests' outages: the group forgets the
        // static members of transactions and email while their broker is away, and they
        // must find their way back in.
        let session = pair("KAFKA_CONFIG_SESSION_TIMEOUT_MS", "6000");
        let vars = HashMap::from([
            (
                "orders",
                with(vec![pair("ORDERS_HTTP_ADDR", &format!("127.0.0.1:{port}"))]),
            ),
            (
                "transactions",
                with(vec![
                    pair("TRANSACTIONS_INSTANCE_ID", "fault-test"),
                    session.clone(),
                ]),
            ),
            ("email", {
                let mut extra = mailpit.smtp_vars();
                extra.push(pair("EMAIL_INSTANCE_ID", "fault-test"));
                extra.push(session);
                with(extra)
            }),
            ("analytics", with(Vec::new())),
        ]);
        let running = ["orders", "transactions", "email", "analytics"]
            .into_iter()
            .map(|name| (name, ServiceProcess::start(name, &vars[name])))
            .collect();
        Self {
            url: format!("http://127.0.0.1:{port}"),
            vars,
            running,
        }
    }

    /// Waits until the orders API says it is ready (the broker answers).
    pub async fn await_ready(&self, deadline: Duration) {
        let client = reqwest::Client::new();
        let until = Instant::now() + deadline;
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.url)).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "orders API not ready within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every service still runs as the process started first: none exited, none restarted.
    pub fn assert_all_running(&mut self) {
        for (name, process) in &mut self.running {
            assert!(process.is_running(), "{name} exited");
        }
    }

    /// SIGKILLs `name` and starts it again at once, with the same settings (and so the same
    /// instance ids).
    pub fn kill_and_restart(&mut self, name: &'static str) {
        let at = self
            .running
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no service {name}"));
        let (_, process) = self.running.remove(at);
        process.kill();
        self.running
            .push((name, ServiceProcess::start(name, &self.vars[name])));
    }
}

/// One POST of the stream and how it was answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub order_id: u64,
    pub body: Value,
    /// The HTTP status of the last attempt; 0 when no answer came at all.
    pub status: u16,
    /// The status of the first attempt, before the client sent a refused order again.
    pub first_status: u16,
    pub sent_ms: i64,
    pub answered_ms: i64,
}

/// Orders posted at a fixed rate until told to stop, each on its own request.
pub struct Stream {
    stop: CancellationToken,
    task: JoinHandle<Vec<Answer>>,
}

/// The order with id `id`: mailed to this test's own recipient, every seventh declined.
fn order(env: &TestEnv, id: u64) -> Value {
    let price = format!("{}.{:02}", 1 + id % 500, id % 100);
    let mut body = order_body(id, &price);
    body["user_email"] = json!(format!("{}{id}@example.com", env.prefix));
    if id.is_multiple_of(7) {
        body["order_details"]["payment_token"] = json!("tok_declined");
    }
    body
}

impl Stream {
    /// Starts posting `per_second` orders a second to `url`; [`Stream::finish`] stops it
    /// once at least `at_least` went out.
    pub fn start(env: &TestEnv, url: &str, per_second: u64, at_least: u64) -> Self {
        let stop = CancellationToken::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        let url: Arc<str> = Arc::from(format!("{url}/order"));
        let (env, token) = (env.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut requests = Vec::new();
            for id in 1.. {
                if id > at_least && token.is_cancelled() {
                    break;
                }
                let due = started + Duration::from_micros((id - 1) * 1_000_000 / per_second);
                tokio::time::sleep_until(due).await;
                let (client, url, body) = (client.clone(), url.clone(), order(&env, id));
                requests.push(tokio::spawn(async move {
                    let sent_ms = now_ms();
                    let status = match client.post(&*url).json(&body).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    Answer {
                        order_id: id,
                        body,
                        status,
                        first_status: status,
                        sent_ms,
                        answered_ms: now_ms(),
                    }
                }));
            }
            let mut answers = Vec::with_capacity(requests.len());
            for request in requests {
                answers.push(request.await.expect("a request task panicked"));
            }
            answers
        });
        Self { stop, task }
    }

    /// Stops posting and returns every answer, once all came.
    pub async fn finish(self) -> Vec<Answer> {
        self.stop.cancel();
        self.task.await.expect("the stream panicked")
    }
}

/// Sends every order answered 503 once more, as the API's `Retry-After` invites a client
/// to: the same body, so the same `order_id`. Returns how many were sent again.
pub async fn send_refused_again(url: &str, answers: &mut [Answer]) -> usize {
    use futures::StreamExt;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let url = format!("{url}/order");
    let refused: Vec<&mut Answer> = answers.iter_mut().filter(|a| a.status == 503).collect();
    let count = refused.len();
    futures::stream::iter(refused)
        .for_each_concurrent(16, |answer| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                answer.status = match client.post(&url).json(&answer.body).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                answer.answered_ms = now_ms();
            }
        })
        .await;
    count
}

/// What the pipeline wrote for the stream, read back.
#[derive(Debug)]
pub struct Outputs {
    pub decisions: Vec<Record>,
    pub emails_sent: Vec<Record>,
    pub results: Vec<(AnalyticsResult, i64)>,
    /// E-mails that went out more than once (same `Message-ID`), by order.
    pub repeated_mails: usize,
}

impl Outputs {
    /// The latest timestamp of a decision (or `order_email_sent` record) of the orders in
    /// `ids`.
    pub fn last_of(records: &[Record], ids: &BTreeSet<u64>) -> Option<i64> {
        records
            .iter()
            .filter(|r| key_id(r).is_some_and(|id| ids.contains(&id)))
            .filter_map(|r| r.timestamp_ms)
            .max()
    }

    /// When analytics had counted `count` decisions.
    pub fn counted_at(&self, count: usize) -> Option<i64> {
        let mut times: Vec<i64> = self.results.iter().map(|(_, at)| *at).collect();
        times.sort_unstable();
        count.checked_sub(1).and_then(|i| times.get(i).copied())
    }

    /// Says how long after `returned_ms` each stage had finished the orders in `backlog`.
    pub fn report_catch_up(&self, what: &str, backlog: &BTreeSet<u64>, returned_ms: i64) {
        let after = |at: Option<i64>| match at {
            Some(at) if at > returned_ms => format!("{:.1} s", (at - returned_ms) as f64 / 1e3),
            Some(_) => "before".to_owned(),
            None => "never".to_owned(),
        };
        report(&format!(
            "catch-up after {what}, for the {} orders accepted before it: decided {}, e-mailed {}, counted {}",
            backlog.len(),
            after(Self::last_of(&self.decisions, backlog)),
            after(Self::last_of(&self.emails_sent, backlog)),
            after(self.counted_at(backlog.len())),
        ));
    }
}

fn key_id(record: &Record) -> Option<u64> {
    record.key.as_deref().and_then(|k| k.parse().ok())
}

/// Reads `topic` until every order in `ids` has a record there, then until it settles.
async fn read_all(env: &TestEnv, topic: Topic, ids: &BTreeSet<u64>) -> Vec<Record> {
    let (env, ids) = (env.clone(), ids.clone());
    tokio::task::spawn_blocking(move || {
        let name = env.topic(topic);
        let mut reader = env.reader(&name);
        reader
            .read_until(
                &format!("a record on {name} for each of {} orders", ids.len()),
                DRAIN_DEADLINE,
                |records| {
                    records.len() >= ids.len() && {
                        let seen: BTreeSet<u64> = records.iter().filter_map(key_id).collect();
                        ids.is_subset(&seen)
                    }
                },
            )
            .to_vec()
    })
    .await
    .expect("reader panicked")
}

/// Exactly one record per order in `accepted`, and none for any other order.
fn assert_one_each(what: &str, records: &[Record], accepted: &BTreeSet<u64>) {
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for record in records {
        let id =
            key_id(record).unwrap_or_else(|| panic!("{what}: unexpected key {:?}", record.key));
        *count.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{what} more than once: {twice:?}");
    let seen: BTreeSet<u64> = count.keys().copied().collect();
    let missing: Vec<_> = accepted.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{what} missing for accepted orders {missing:?}"
    );
    let unexpected: Vec<_> = seen.difference(accepted).collect();
    assert!(
        unexpected.is_empty(),
        "{what} for orders that were not accepted: {unexpected:?}"
    );
}

/// Asserts the stream's outcome exactly: every status is 200 or 503; every order answered
/// 200 has one decision, one `order_email_sent`, one e-mail (one `Message-ID`) and is counted
/// once, with exact totals; no order answered 503 has any of these. (An order refused and
/// then sent again counts by its last answer.)
pub async fn assert_exactly_once(env: &TestEnv, mailpit: &Mailpit, answers: &[Answer]) -> Outputs {
    let other: Vec<(u64, u16)> = answers
        .iter()
        .filter(|a| a.status != 200 && a.status != 503)
        .map(|a| (a.order_id, a.status))
        .collect();
    assert!(
        other.is_empty(),
        "answers other than 200 and 503: {other:?}"
    );
    let accepted: BTreeSet<u64> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.order_id)
        .collect();
    assert!(!accepted.is_empty(), "no order was accepted");

    let decisions = read_all(env, Topic::OrderConfirmed, &accepted).await;
    assert_one_each("decision", &decisions, &accepted);
    let emails_sent = read_all(env, Topic::OrderEmailSent, &accepted).await;
    assert_one_each("order_email_sent", &emails_sent, &accepted);

    // Mailpit: at least one e-mail per accepted order and one Message-ID each; a copy with
    // the same Message-ID (email killed between the send and its record) is one e-mail to
    // the customer's mail system.
    let mails = mailpit
        .wait_for(
            &format!("to:{}", env.prefix),
            accepted.len(),
            DRAIN_DEADLINE,
        )
        .await;
    let mut ids_by_order: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut copies = 0;
    for mail in &mails {
        let id: u64 = mail.to[0]
            .address
            .strip_prefix(&env.prefix)
            .and_then(|rest| rest.strip_suffix("@example.com"))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("unexpected recipient {}", mail.to[0].address));
        if !ids_by_order
            .entry(id)
            .or_default()
            .insert(mail.message_id.clone())
        {
            copies += 1;
        }
    }
    let mailed: BTreeSet<u64> = ids_by_order.keys().copied().collect();
    assert_eq!(
        mailed.difference(&accepted).collect::<Vec<_>>(),
        Vec::<&u64>::new(),
        "e-mails for orders that were not accepted"
    );
    assert_eq!(
        accepted.difference(&mailed).collect::<Vec<_>>(),
        Vec::<&u64>::new(),
        "accepted orders without an e-mail"
    );
    let distinct: Vec<_> = ids_by_order
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    assert!(
        distinct.is_empty(),
        "orders e-mailed as different messages: {distinct:?}"
    );

    let results = read_results(env, accepted.len()).await;
    let mut seqs: Vec<u64> = results.iter().map(|(r, _)| r.seq).collect();
    seqs.sort_unstable();
    let decided = accepted.len() as u64;
    assert_eq!(
        seqs,
        (1..=decided).collect::<Vec<_>>(),
        "one result per decision"
    );
    let (revenue, confirmed, declined) = expected_totals(answers);
    let (last, _) = results.iter().max_by_key(|(r, _)| r.seq).expect("results");
    assert_eq!(last.total_revenue_exact, revenue, "total revenue");
    assert_eq!(last.total_orders_count, confirmed, "confirmed orders");
    assert_eq!(last.total_declined_count, declined, "declined orders");

    Outputs {
        decisions,
        emails_sent,
        results,
        repeated_mails: copies,
    }
}

/// (revenue, confirmed, declined) of the orders answered 200.
fn expected_totals(answers: &[Answer]) -> (Decimal, u64, u64) {
    let mut revenue = Decimal::ZERO;
    let (mut confirmed, mut declined) = (0, 0);
    for answer in answers.iter().filter(|a| a.status == 200) {
        if answer.body["order_details"]["payment_token"] == json!("tok_declined") {
            declined += 1;
        } else {
            revenue += answer.body["order_details"]["price"]
                .to_string()
                .parse::<Decimal>()
                .expect("price");
            confirmed += 1;
        }
    }
    (revenue, confirmed, declined)
}

/// Every result on `analytics_result` until the one of decision `decisions`, with when it
/// was written.
async fn read_results(env: &TestEnv, decisions: usize) -> Vec<(AnalyticsResult, i64)> {
    let env = env.clone();
    let decisions = decisions as u64;
    let decode =
        |r: &Record| -> AnalyticsResult { serde_json::from_slice(&r.payload).expect("result") };
    tokio::task::spawn_blocking(move || {
        let mut reader = env.reader(&env.topic(Topic::AnalyticsResult));
        reader
            .read_until(
                &format!("the result of decision {decisions}"),
                DRAIN_DEADLINE,
                |records| records.last().is_some_and(|r| decode(r).seq >= decisions),
            )
            .iter()
            .map(|r| (decode(r), r.timestamp_ms.expect("record timestamp")))
            .collect()
    })
    .await
    .expect("reader panicked")
}
