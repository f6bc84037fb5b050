//! Brokers killed, lost and restarted under a steady stream: nothing accepted is lost,
//! nothing is decided, counted or e-mailed twice, and no service exits.

use std::collections::BTreeSet;
use std::time::Duration;

use common::kafka::{base_config, transactional_producer};
use common::{Topic, kafka};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::Producer;

use crate::brokers::Brokers;
use crate::helpers::TestEnv;
use crate::helpers::mailpit::mailpit;
use crate::pipeline::{
    Answer, Pipeline, Stream, assert_exactly_once, now_ms, report, send_refused_again,
};

/// Orders a second, and the fewest a stream posts.
const RATE: u64 = 100;
const AT_LEAST: u64 = 2_000;

/// Orders a second while a cluster of three restarts: three brokers on the test machine's
/// cores leave less room for the pipeline.
const CLUSTER_RATE: u64 = 50;

/// How long a rolling restart lets a broker back in sync settle before stopping the next,
/// as an operator would.
const SETTLE: Duration = Duration::from_secs(5);

/// How long the services of the single-broker test wait for their broker to start: longer
/// than the 30 s after which a service used to give up.
const BROKER_LATE: Duration = Duration::from_secs(35);

/// The transactions instance id the pipeline runs with (see [`Pipeline::start`]).
const TRANSACTIONS_INSTANCE: &str = "fault-test";

/// Orders answered 200 before `ms`.
fn accepted_before(answers: &[Answer], ms: i64) -> BTreeSet<u64> {
    answers
        .iter()
        .filter(|a| a.status == 200 && a.answered_ms < ms)
        .map(|a| a.order_id)
        .collect()
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking step panicked")
}

/// Does `work` to the brokers on a blocking thread (it waits for JVMs), and hands them back.
async fn on(brokers: Brokers, work: impl FnOnce(&Brokers) + Send + 'static) -> Brokers {
    blocking(move || {
        work(&brokers);
        brokers
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_single_broker_killed_mid_stream_and_restarted_loses_and_repeats_nothing() {
    let _alone = crate::ONE_AT_A_TIME.lock().await;
    let Some(mailpit) = mailpit() else { return };
    // The services start first and wait for their broker longer than any of them used to.
    let brokers = Brokers::new(1);
    let env = TestEnv::on(&brokers.bootstrap_servers(), 1);
    let mut pipeline = Pipeline::launch(&env, &mailpit);
    tokio::time::sleep(BROKER_LATE).await;
    pipeline.assert_all_running();
    let brokers = on(brokers, move |brokers| {
        brokers.start_all();
    })
    .await;
    pipeline.await_ready(Duration::from_secs(90)).await;
    pipeline.assert_all_running();
    let stream = Stream::start(&env, &pipeline.url, RATE, AT_LEAST);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed_ms = now_ms();
    let brokers = on(brokers, move |brokers| {
        brokers.kill(1);
    })
    .await;
    report("broker SIGKILLed; down for 12 s");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let brokers = on(brokers, move |brokers| {
        brokers.restart(1);
    })
    .await;
    let returned_ms = now_ms();
    report(&format!(
        "broker back after {:.1} s",
        (returned_ms - killed_ms) as f64 / 1e3
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut answers = stream.finish().await;
    pipeline.assert_all_running();

    let refused = answers.iter().filter(|a| a.first_status == 503).count();
    let accepted = answers.iter().filter(|a| a.first_status == 200).count();
    report(&format!(
        "{} orders posted: {accepted} accepted, {refused} answered 503 while the broker was away",
        answers.len()
    ));
    assert!(refused > 0, "the outage was never seen by the API");
    assert!(
        answers
            .iter()
            .filter(|a| a.sent_ms > returned_ms + 2_000)
            .all(|a| a.status == 200),
        "orders still refused 2 s after the broker was back"
    );
    // A write in flight when the broker died may be in its log though the API, never
    // told, answered 503: the client sends every refused order again, and each order must
    // still be decided, e-mailed and counted exactly once.
    send_refused_again(&pipeline.url, &mut answers).await;
    let outputs = assert_exactly_once(&env, &mailpit, &answers).await;
    outputs.report_catch_up(
        "the broker restart",
        &accepted_before(&answers, killed_ms),
        returned_ms,
    );
    pipeline.assert_all_running();
    drop(brokers);
}

/// Java's `String::hashCode`, with which Kafka places a transactional id on a partition of
/// `__transaction_state`.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The broker coordinating the transactions of `transactional_id` (the leader of its
/// `__transaction_state` partition, which the first transactional producer creates).
fn coordinator(brokers: &Brokers, env: &TestEnv, transactional_id: &str) -> i32 {
    const STATE_PARTITIONS: i32 = 50; // transaction.state.log.num.partitions
    let producer = transactional_producer(
        &env.kafka,
        "fault-test",
        transactional_id,
        Duration::from_secs(10),
    )
    .expect("producer");
    producer
        .init_transactions(Duration::from_secs(60))
        .expect("initialising transactions");
    drop(producer);
    let partition = (java_hash(transactional_id) & 0x7fff_ffff) % STATE_PARTITIONS;
    brokers.leader("__transaction_state", partition)
}

/// Creates `order_details` with `leader` leading partition 0 (and each broker leading one).
async fn create_order_details_led_by(env: &TestEnv, brokers: &[i32], leader: i32) {
    let others: Vec<i32> = brokers.iter().copied().filter(|b| *b != leader).collect();
    let (a, b) = (others[0], others[1]);
    let assignment: [&[i32]; 3] = [&[leader, a, b], &[a, b, leader], &[b, leader, a]];
    let name = env.topic(Topic::OrderDetails);
    let admin: AdminClient<DefaultClientContext> =
        base_config(&env.kafka).create().expect("admin client");
    let topic = NewTopic::new(&name, 3, TopicReplication::Variable(&assignment));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("creating order_details");
    for result in results {
        result.expect("order_details created");
    }
    // The services create the rest; make sure the topic is visible before they start.
    kafka::ensure_topics(&env.kafka, &[name])
        .await
        .expect("order_details listed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_broker_cluster_rides_out_a_lost_leader_and_coordinator_and_a_rolling_restart() {
    let _alone = crate::ONE_AT_A_TIME.lock().await;
    let Some(mailpit) = mailpit() else { return };
    let brokers = blocking(|| Brokers::start(3)).await;
    let env = TestEnv::on(&brokers.bootstrap_servers(), 3);
    let transactional_id = env
        .kafka
        .topics()
        .scoped(&format!("transactions-{TRANSACTIONS_INSTANCE}"));
    let (brokers, victim) = {
        let env = env.clone();
        blocking(move || {
            let victim = coordinator(&brokers, &env, &transactional_id);
            (brokers, victim)
        })
        .await
    };
    create_order_details_led_by(&env, &brokers.ids(), victim).await;
    assert_eq!(
        brokers.leader(&env.topic(Topic::OrderDetails), 0),
        victim,
        "the coordinator leads order_details[0]"
    );
    let mut pipeline = Pipeline::start(&env, &mailpit).await;
    let stream = Stream::start(&env, &pipeline.url, CLUSTER_RATE, AT_LEAST);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed_ms = now_ms();
    let brokers = on(brokers, move |brokers| {
        brokers.kill(victim);
    })
    .await;
    report(&format!(
        "broker {victim} (leader of order_details[0], transaction coordinator of transactions) SIGKILLed"
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let brokers = on(brokers, move |brokers| {
        brokers.restart(victim);
        brokers.await_in_sync(Duration::from_secs(180));
    })
    .await;
    let returned_ms = now_ms();
    report(&format!(
        "broker {victim} back and in sync after {:.1} s",
        (returned_ms - killed_ms) as f64 / 1e3
    ));

    let rolling_from = now_ms();
    let brokers = on(brokers, move |brokers| {
        for id in brokers.ids() {
            brokers.stop(id);
            brokers.restart(id);
            brokers.await_in_sync(Duration::from_secs(180));
            std::thread::sleep(SETTLE);
        }
    })
    .await;
    let rolling_until = now_ms();
    report(&format!(
        "rolling restart of all three brokers took {:.1} s",
        (rolling_until - rolling_from) as f64 / 1e3
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut answers = stream.finish().await;
    pipeline.assert_all_running();

    let during_roll: Vec<(u64, u16)> = answers
        .iter()
        .filter(|a| a.sent_ms >= rolling_from && a.sent_ms <= rolling_until)
        .filter(|a| a.first_status != 200)
        .map(|a| (a.order_id, a.first_status))
        .collect();
    let rolled = answers
        .iter()
        .filter(|a| a.sent_ms >= rolling_from && a.sent_ms <= rolling_until)
        .count();
    assert!(rolled > 0, "no order was posted during the rolling restart");
    assert!(
        during_roll.is_empty(),
        "answers other than 200 during the rolling restart: {during_roll:?}"
    );
    let refused = send_refused_again(&pipeline.url, &mut answers).await;
    report(&format!(
        "{} orders posted ({rolled} during the rolling restart), {refused} answered 503 and sent again",
        answers.len()
    ));
    let outputs = assert_exactly_once(&env, &mailpit, &answers).await;
    outputs.report_catch_up(
        "the loss of one broker",
        &accepted_before(&answers, killed_ms),
        returned_ms,
    );
    pipeline.assert_all_running();
    drop(brokers);
}
