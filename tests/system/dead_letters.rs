//! The operator's `flatpack dead-letters` command, run as its binary against the broker: a
//! poison order is dead-lettered, listed, shown, fixed, replayed and then decided once,
//! however often it is replayed; bad requests are refused with a message naming the problem.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::Topic;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

use crate::helpers::{Record, TestEnv, binary, spawn_transactions};
use crate::test_env;

/// Runs `flatpack` with `args` against the test's broker and topic namespace.
async fn flatpack(env: &TestEnv, args: &[&str]) -> Output {
    let mut command = Command::new(binary("flatpack"));
    command.args(args).envs(env.service_vars());
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the flatpack runner panicked")
        .expect("running flatpack")
}

/// The standard output of a command that must have succeeded.
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "flatpack failed ({}): stdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// The standard error of a command that must have failed with `code`.
fn failed(output: &Output, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn order(order_id: u64, price: i64) -> Value {
    json!({"user_id": 7, "order_id": order_id, "user_email": "anna@example.com",
        "order_details": {"price": price, "item": "BILLY bookcase"}, "time": 1_700_000_000.5})
}

/// Writes a message with `headers` to `partition` of `topic`.
async fn produce_to(
    env: &TestEnv,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    env.producer()
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .expect("producing test input");
}

/// The dead-letter headers the services write, for a message of `source` at 0:`offset`.
fn dead_letter_headers<'a>(source: &'a str, offset: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("dlq.error", "refused by an older release"),
        ("dlq.topic", source),
        ("dlq.partition", "0"),
        ("dlq.offset", offset),
        ("dlq.service", "transactions"),
    ]
}

/// Creates the test's `order_details`, its dead-letter topic and `more`; returns the names
/// of the first two.
async fn source_and_dlq(env: &TestEnv, more: &[String]) -> (String, String) {
    let (source, dlq) = (env.topic(Topic::OrderDetails), env.dlq(Topic::OrderDetails));
    let mut topics = vec![source.clone(), dlq.clone()];
    topics.extend_from_slice(more);
    env.create_topics(&topics).await;
    (source, dlq)
}

/// Writes the orders `ids` (price 10) to partition 0 of `dlq` as the dead letters of
/// `source`'s partition 0, from offset 0 on.
async fn dead_letter_orders(env: &TestEnv, source: &str, dlq: &str, ids: &[u64]) {
    for (offset, id) in ids.iter().enumerate() {
        let (payload, offset) = (order(*id, 10).to_string(), offset.to_string());
        let headers = dead_letter_headers(source, &offset);
        produce_to(env, dlq, 0, &id.to_string(), payload.as_bytes(), &headers).await;
    }
}

/// The order ids of `records` (decisions), sorted, one entry per record.
fn order_ids(records: &[Record]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.json()["order_id"].to_string())
        .collect();
    ids.sort();
    ids
}

fn temp_file(env: &TestEnv, name: &str, content: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}{name}", env.prefix));
    std::fs::write(&path, content).expect("writing a temporary file");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_order_dead_lettered_then_fixed_and_replayed_is_decided_once() {
    let env = test_env!();
    let confirmed = env.topic(Topic::OrderConfirmed);
    let (source, dlq) = source_and_dlq(&env, std::slice::from_ref(&confirmed)).await;
    // Arrange: a poison order, dead-lettered by the transactions service; and an order that
    // is fine as it is, dead-lettered by mistake (by an older release, say).
    env.produce(&source, "501", order(501, -3).to_string().as_bytes())
        .await;
    produce_to(
        &env,
        &dlq,
        0,
        "502",
        order(502, 120).to_string().as_bytes(),
        &dead_letter_headers(&source, "99"),
    )
    .await;
    let service = spawn_transactions(&env, "a");
    let mut dead = env.reader(&dlq);
    assert_eq!(dead.read_at_least(2, Duration::from_secs(60)).len(), 2);

    // list: one line per message, and a summary.
    let listed = succeeded(&flatpack(&env, &["dead-letters", "list", &dlq]).await);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert_eq!(lines[2], format!("2 dead letters in {dlq}, 0 replayed"));
    let poison_line = lines
        .iter()
        .find(|l| l.contains("  key=501  "))
        .expect("a line for order 501");
    assert!(
        poison_line.contains(&format!("  key=501  replayed=no  from={source}/")),
        "{poison_line}"
    );
    assert!(
        poison_line
            .ends_with("  service=transactions  error=order_details.price: must not be negative"),
        "{poison_line}"
    );

    // list --json: where each message is.
    let listed: Value = serde_json::from_str(&succeeded(
        &flatpack(&env, &["dead-letters", "list", &dlq, "--json"]).await,
    ))
    .expect("list --json is JSON");
    let entries = listed.as_array().expect("an array");
    assert_eq!(entries.len(), 2, "{listed}");
    let at = |key: &str| {
        let entry = entries
            .iter()
            .find(|e| e["key"] == json!(key))
            .expect("an entry per message");
        assert_eq!(entry["replayed"], Value::Null);
        format!("{}:{}", entry["partition"], entry["offset"])
    };
    let (poison_at, mistake_at) = (at("501"), at("502"));
    assert_eq!(mistake_at, "0:0");
    let poison_entry = entries.iter().find(|e| e["key"] == json!("501")).unwrap();
    assert_eq!(
        poison_entry["error"],
        json!("order_details.price: must not be negative")
    );
    assert_eq!(poison_entry["source"]["topic"], json!(source));
    assert_eq!(poison_entry["source"]["offset"], json!(0));
    assert_eq!(poison_entry["service"], json!("transactions"));

    // show: the headers and the payload, pretty.
    let shown = succeeded(&flatpack(&env, &["dead-letters", "show", &dlq, &poison_at]).await);
    assert!(
        shown.contains("\n  dlq.error: order_details.price: must not be negative\n"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("\n  dlq.topic: {source}\n")),
        "{shown}"
    );
    assert!(shown.contains("\nreplayed:  no\n"), "{shown}");
    assert!(shown.contains("\npayload (JSON):\n{\n"), "{shown}");
    assert!(shown.contains("\n    \"price\": -3\n"), "{shown}");

    // The operator fixes the payload that show --payload gave.
    let payload = succeeded(
        &flatpack(
            &env,
            &["dead-letters", "show", &dlq, &poison_at, "--payload"],
        )
        .await,
    );
    let mut fixed: Value = serde_json::from_str(&payload).expect("the payload is JSON");
    assert_eq!(fixed, order(501, -3));
    fixed["order_details"]["price"] = json!(349);
    let fixed_file = temp_file(&env, "fixed.json", fixed.to_string().as_bytes());
    let fixed_file = fixed_file.to_str().expect("UTF-8 path");

    // Act: replay the fixed order.
    let replay_fixed = [
        "dead-letters",
        "replay",
        &dlq,
        "--offset",
        &poison_at,
        "--payload-file",
        fixed_file,
    ];
    let replayed = succeeded(&flatpack(&env, &replay_fixed).await);
    assert_eq!(
        replayed,
        format!(
            "replayed {dlq} {poison_at} to {source} with the payload from the file\n\
             1 replayed, 0 already replayed before\n"
        )
    );
    let mut decisions = env.reader(&confirmed);
    let decided = decisions
        .read_until("the decision of order 501", Duration::from_secs(60), |r| {
            !r.is_empty()
        })
        .to_vec();
    assert_eq!(order_ids(&decided), ["501"]);
    assert_eq!(decided[0].json()["status"], json!("confirmed"));
    assert_eq!(decided[0].json()["order_details"]["price"], json!(349));

    // Replayed again: nothing is written, and the command says so.
    let again = succeeded(&flatpack(&env, &replay_fixed).await);
    assert!(
        again.starts_with(&format!(
            "already replayed {dlq} {poison_at} (to {source}, at "
        )),
        "{again}"
    );
    assert!(
        again.ends_with("): not replayed again\n0 replayed, 1 already replayed before\n"),
        "{again}"
    );

    // --all replays what was not replayed yet, and only once.
    let all = succeeded(&flatpack(&env, &["dead-letters", "replay", &dlq, "--all"]).await);
    assert!(
        all.ends_with(&format!(
            "replayed {dlq} {mistake_at} to {source}\n1 replayed, 1 already replayed before\n"
        )),
        "{all}"
    );
    let all_again = succeeded(&flatpack(&env, &["dead-letters", "replay", &dlq, "--all"]).await);
    assert!(
        all_again.ends_with("0 replayed, 2 already replayed before\n"),
        "{all_again}"
    );
    assert_eq!(all_again.lines().count(), 3, "{all_again}");

    // Assert: one decision per order, one replayed copy per dead letter, no new dead letter.
    let mut decisions = env.reader(&confirmed);
    let decided = decisions
        .read_until("decisions of 501 and 502", Duration::from_secs(60), |r| {
            r.len() >= 2
        })
        .to_vec();
    assert_eq!(order_ids(&decided), ["501", "502"]);
    let mut orders = env.reader(&source);
    let written = orders.read_at_least(3, Duration::from_secs(30)).to_vec();
    assert_eq!(written.len(), 3, "the poison order and two replays");
    let mut replayed_from: Vec<&str> = written
        .iter()
        .filter_map(|r| r.headers.get("dlq.replayed-from").map(String::as_str))
        .collect();
    replayed_from.sort_unstable();
    let key = |at: &str| format!("{dlq}/{}", at.replace(':', "/"));
    let mut expected = vec![key(&poison_at), key(&mistake_at)];
    expected.sort_unstable();
    assert_eq!(replayed_from, expected);
    let mut dead = env.reader(&dlq);
    assert_eq!(dead.read_at_least(2, Duration::from_secs(30)).len(), 2);
    let listed = succeeded(&flatpack(&env, &["dead-letters", "list", &dlq]).await);
    assert!(
        listed.ends_with(&format!("2 dead letters in {dlq}, 2 replayed\n")),
        "{listed}"
    );
    assert_eq!(listed.matches("  replayed=yes  ").count(), 2, "{listed}");
    let shown = succeeded(&flatpack(&env, &["dead-letters", "show", &dlq, &poison_at]).await);
    let record = shown
        .lines()
        .find_map(|line| line.strip_prefix("replayed:  yes "))
        .expect("show says it was replayed");
    let record: Value = serde_json::from_str(record).expect("the replay record is JSON");
    assert_eq!(record["to_topic"], json!(source));
    assert_eq!(record["payload_replaced"], json!(true));

    service.stop().await.unwrap();
    env.cleanup().await;
    let _ = std::fs::remove_file(fixed_file);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_commands_refuse_bad_requests_naming_the_problem_and_write_nothing() {
    let env = test_env!();
    let odd = format!("{}odd.dlq", env.prefix);
    let gone = format!("{}gone", env.prefix);
    let (source, dlq) = source_and_dlq(&env, std::slice::from_ref(&odd)).await;
    dead_letter_orders(&env, &source, &dlq, &[601, 602]).await;
    produce_to(&env, &odd, 0, "9", b"{}", &[]).await;
    produce_to(&env, &odd, 0, "9", b"{}", &dead_letter_headers(&gone, "0")).await;
    let not_json = temp_file(&env, "fixed.txt", b"{\"order_id\": 601,");
    let not_json = not_json.to_str().expect("UTF-8 path");
    let json_file = temp_file(&env, "fixed.json", order(601, 10).to_string().as_bytes());
    let json_file = json_file.to_str().expect("UTF-8 path");
    let missing_topic = format!("{}nope.dlq", env.prefix);
    let replay_first_with = |file| vec!["replay", &dlq, "--offset", "0:0", "--payload-file", file];

    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["list", &missing_topic],
            1,
            format!("error: unknown topic {missing_topic}: the broker at"),
        ),
        (
            vec!["show", &dlq, "0:7"],
            1,
            format!("error: {dlq} has no message at 0:7 (partition 0 holds offsets 0 to 1)"),
        ),
        (
            vec!["show", &dlq, "5:0"],
            1,
            format!("error: {dlq} has no partition 5 (its partitions: 0, 1, 2)"),
        ),
        (
            vec!["show", &dlq, "zero"],
            2,
            "\"zero\" is not PARTITION:OFFSET".to_string(),
        ),
        (
            vec!["replay", &odd, "--offset", "0:0"],
            1,
            format!("error: {odd} 0:0 has no dlq.topic header"),
        ),
        (
            vec!["replay", &odd, "--all"],
            1,
            format!("error: {odd} 0:0 has no dlq.topic header"),
        ),
        (
            vec!["replay", &odd, "--offset", "0:1"],
            1,
            format!("error: unknown topic {gone} (the dlq.topic header of messages in {odd})"),
        ),
        (
            vec!["replay", &dlq, "--all", "--payload-file", json_file],
            1,
            "error: --payload-file replaces the payload of one message, but 2 are chosen"
                .to_string(),
        ),
        (
            replay_first_with(not_json),
            1,
            format!("error: the payload file {not_json} is not JSON"),
        ),
        (
            replay_first_with("/nonexistent/fixed.json"),
            1,
            "error: reading the payload file /nonexistent/fixed.json".to_string(),
        ),
        (
            vec!["replay", &dlq, "--from", "0:0", "--to", "1:3"],
            1,
            "error: --from 0:0 and --to 1:3 must be in the same partition".to_string(),
        ),
        (
            vec!["replay", &dlq, "--from", "0:5", "--to", "0:9"],
            1,
            format!(
                "error: {dlq} has no message from 0:5 to 0:9 (partition 0 holds offsets 0 to 1)"
            ),
        ),
        (vec!["replay", &dlq], 2, "--all".to_string()),
        (
            vec!["replay", &dlq, "--all", "--offset", "0:0"],
            2,
            "cannot be used with".to_string(),
        ),
    ];
    for (args, code, expected) in cases {
        let mut full = vec!["dead-letters"];
        full.extend(args.iter().copied());
        let stderr = failed(&flatpack(&env, &full).await, code);
        assert!(
            stderr.contains(&expected),
            "flatpack {full:?}: expected {expected:?} in:\n{stderr}"
        );
    }

    // Nothing was written to the source.
    let mut orders = env.reader(&source);
    let written = orders.read_until("nothing", Duration::from_secs(10), |_| true);
    assert_eq!(written.len(), 0);

    env.cleanup().await;
    let _ = std::fs::remove_file(not_json);
    let _ = std::fs::remove_file(json_file);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_replays_of_the_same_dead_letters_write_each_once() {
    let env = test_env!();
    let (source, dlq) = source_and_dlq(&env, &[]).await;
    dead_letter_orders(&env, &source, &dlq, &[701, 702]).await;

    // Act: three operators replay everything at once.
    let replay_all = ["dead-letters", "replay", dlq.as_str(), "--all"];
    let runs = futures::future::join_all((0..3).map(|_| flatpack(&env, &replay_all))).await;

    // Assert: one replay wrote both; the others found them replayed, or were fenced by a
    // newer one and wrote nothing.
    let mut writers = 0;
    for run in &runs {
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        eprintln!("a replay said: {stdout}{stderr}");
        if stdout.ends_with("2 replayed, 0 already replayed before\n") {
            writers += 1;
        } else {
            assert!(
                stdout.ends_with("0 replayed, 2 already replayed before\n")
                    || (run.status.code() == Some(1)
                        && stderr.contains("nothing was replayed by this one")),
                "stdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
    }
    assert_eq!(writers, 1, "{runs:?}");
    let mut orders = env.reader(&source);
    let written = orders.read_at_least(2, Duration::from_secs(30)).to_vec();
    let mut ids: Vec<String> = written
        .iter()
        .map(|r| r.json()["order_id"].to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["701", "702"]);
    let last = succeeded(&flatpack(&env, &["dead-letters", "replay", &dlq, "--all"]).await);
    assert!(
        last.ends_with("0 replayed, 2 already replayed before\n"),
        "{last}"
    );

    env.cleanup().await;
}
