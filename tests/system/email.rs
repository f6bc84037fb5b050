//! The email service: every decided order gets exactly one e-mail, in a real mailbox
//! (Mailpit), and one `order_email_sent` record; through restarts, SMTP outages and poison.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Topic;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::helpers::mailpit::{MailSummary, Mailpit, mailpit};
use crate::helpers::{
    Record, ServiceProcess, TestEnv, free_addr, order_body, post_all, scrape_until, spawn_email,
    spawn_orders, spawn_transactions,
};
use crate::test_env;

/// The recipient of order `id` in this test: the test's prefix makes it unique in the
/// shared Mailpit.
fn recipient(env: &TestEnv, id: u64) -> String {
    format!("{}{id}@example.com", env.prefix)
}

/// An order request for `id`, sent to this test's recipient; declined by the payment check
/// when `declined`.
fn body(env: &TestEnv, id: u64, declined: bool) -> Value {
    let mut body = order_body(id, "129.99");
    body["user_email"] = json!(recipient(env, id));
    if declined {
        body["order_details"]["payment_token"] = json!("tok_declined");
    }
    body
}

/// A confirmed decision on order `id`, as transactions writes it, for this test's recipient.
fn confirmed(env: &TestEnv, id: u64) -> Value {
    json!({"user_id": 7, "order_id": id, "user_email": recipient(env, id),
        "order_details": {"price": 10}, "time": 1_700_000_000.5, "status": "confirmed"})
}

/// Writes decisions on `ids` (in this order) to `order_confirmed`, all on one key so that
/// they stay in one partition in this order.
async fn produce_confirmed(env: &TestEnv, ids: &[u64]) {
    let source = env.topic(Topic::OrderConfirmed);
    for &id in ids {
        env.produce(&source, "k", confirmed(env, id).to_string().as_bytes())
            .await;
    }
}

/// This test's e-mails in Mailpit.
fn query(env: &TestEnv) -> String {
    format!("to:{}", env.prefix)
}

/// E-mails per order id, read back from the recipient address.
fn mails_by_order(env: &TestEnv, mails: &[MailSummary]) -> HashMap<u64, Vec<MailSummary>> {
    let mut by_order: HashMap<u64, Vec<MailSummary>> = HashMap::new();
    for mail in mails {
        assert_eq!(mail.to.len(), 1, "one recipient per e-mail");
        let id = mail.to[0]
            .address
            .strip_prefix(&env.prefix)
            .and_then(|rest| rest.strip_suffix("@example.com"))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("unexpected recipient {}", mail.to[0].address));
        by_order.entry(id).or_default().push(mail.clone());
    }
    by_order
}

/// Asserts that orders `ids` got exactly one e-mail each, carrying their order id, and that
/// nobody else got one.
fn assert_one_mail_each(env: &TestEnv, mails: &[MailSummary], ids: impl Iterator<Item = u64>) {
    let by_order = mails_by_order(env, mails);
    let mut missing = Vec::new();
    let mut expected = 0;
    for id in ids {
        expected += 1;
        match by_order.get(&id).map(Vec::as_slice) {
            Some([mail]) => assert!(
                mail.subject
                    .split_whitespace()
                    .any(|word| word == id.to_string()),
                "the subject carries the order id: {}",
                mail.subject
            ),
            Some(more) => panic!("order {id} got {} e-mails", more.len()),
            None => missing.push(id),
        }
    }
    assert!(missing.is_empty(), "orders without an e-mail: {missing:?}");
    assert_eq!(mails.len(), expected, "e-mails for orders never placed");
}

/// Asserts that orders `ids` have exactly one `order_email_sent` record each, with status true.
fn assert_one_record_each(records: &[Record], ids: impl Iterator<Item = u64>) {
    let mut by_order: HashMap<String, Vec<Value>> = HashMap::new();
    for record in records {
        let sent = record.json();
        assert_eq!(
            record.key.as_deref(),
            Some(sent["order_id"].to_string().trim_matches('"')),
            "records are keyed by order_id"
        );
        assert_eq!(sent["status"], json!(true), "the e-mail went out: {sent}");
        by_order
            .entry(sent["order_id"].to_string())
            .or_default()
            .push(sent);
    }
    let mut expected = 0;
    for id in ids {
        expected += 1;
        let n = by_order.get(&id.to_string()).map_or(0, Vec::len);
        assert_eq!(n, 1, "order {id} has {n} order_email_sent records");
    }
    assert_eq!(records.len(), expected, "one record per order");
}

/// Reads `order_email_sent` until `count` records are in (and it settled).
async fn email_sent_records(env: &TestEnv, count: usize) -> Vec<Record> {
    let env = env.clone();
    tokio::task::spawn_blocking(move || {
        env.reader(&env.topic(Topic::OrderEmailSent))
            .read_at_least(count, Duration::from_secs(120))
            .to_vec()
    })
    .await
    .unwrap()
}

/// Waits until a read_committed reader sees at least `count` records on `topic`.
async fn wait_for_records(env: &TestEnv, topic: Topic, count: usize) {
    let env = env.clone();
    tokio::task::spawn_blocking(move || {
        env.reader(&env.topic(topic))
            .wait_for(count, Duration::from_secs(120));
    })
    .await
    .unwrap();
}

async fn create_topics(env: &TestEnv) {
    env.create_topics(&[
        env.topic(Topic::OrderDetails),
        env.topic(Topic::OrderConfirmed),
        env.topic(Topic::OrderEmailSent),
        env.dlq(Topic::OrderDetails),
        env.dlq(Topic::OrderConfirmed),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn posted_orders_each_get_one_email_in_the_mailbox_and_one_order_email_sent_record() {
    const ORDERS: u64 = 20;
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "a");
    let email = spawn_email(&env, mailpit.smtp_vars());

    let declined = |id: u64| id.is_multiple_of(4);
    let bodies = (1..=ORDERS)
        .map(|id| body(&env, id, declined(id)))
        .collect();
    let statuses = post_all(&api.url, bodies, 8).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let mails = mailpit
        .wait_for(&query(&env), ORDERS as usize, Duration::from_secs(120))
        .await;
    assert_one_mail_each(&env, &mails, 1..=ORDERS);
    let by_order = mails_by_order(&env, &mails);
    for (id, mail) in by_order.iter().map(|(id, m)| (*id, &m[0])) {
        assert_eq!(mail.from.address, "orders@flatpack.example");
        let (expected, kind) = if declined(id) {
            (
                format!("Payment declined for your flatpack order {id}"),
                "declined",
            )
        } else {
            (
                format!("Your flatpack order {id} is confirmed"),
                "confirmation",
            )
        };
        assert_eq!(mail.subject, expected);
        // The same for every send of it, so that a repeat after a crash is recognisable.
        assert_eq!(
            mail.message_id,
            format!("order-{id}.{kind}@flatpack.example")
        );
    }
    let confirmed = mailpit.message(&by_order[&1][0].id).await;
    for body in [&confirmed.text, &confirmed.html] {
        assert!(body.contains("129.99"), "the total is shown: {body}");
        assert!(
            body.contains("BILLY bookcase"),
            "the items are shown: {body}"
        );
    }
    let declined_mail = mailpit.message(&by_order[&4][0].id).await;
    assert!(
        declined_mail.text.contains("Reason: card declined"),
        "{}",
        declined_mail.text
    );
    assert!(declined_mail.html.contains("card declined"));

    let records = email_sent_records(&env, ORDERS as usize).await;
    assert_one_record_each(&records, 1..=ORDERS);
    let first = records
        .iter()
        .map(Record::json)
        .find(|r| r["order_id"] == json!(4))
        .unwrap();
    assert_eq!(first["user_id"], json!(7));
    assert_eq!(first["user_email"], json!(recipient(&env, 4)));
    assert_eq!(first["order_details"]["price"], json!(129.99));
    assert_eq!(first["order_details"]["item"], json!("BILLY bookcase"));
    assert!(first["time"].is_f64());
    assert_eq!(first["kind"], json!("declined_notice"));
    assert!(first["sent_at"].is_f64());

    email.stop().await.unwrap();
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_restart_in_the_middle_of_a_stream_sends_every_email_exactly_once() {
    const ORDERS: u64 = 200;
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "a");
    let mut vars = env.service_vars();
    vars.extend(mailpit.smtp_vars());
    let service = ServiceProcess::start("email", &vars);

    // A steady stream, so that the stop and the restart fall in its middle.
    let url = api.url.clone();
    let bodies: Vec<Value> = (1..=ORDERS).map(|id| body(&env, id, id % 7 == 0)).collect();
    let posting = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for chunk in bodies.chunks(5) {
            statuses.extend(post_all(&url, chunk.to_vec(), 5).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    });

    wait_for_records(&env, Topic::OrderEmailSent, 40).await;
    let status = service.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM ends with exit code 0");
    let service = ServiceProcess::start("email", &vars);

    let statuses = posting.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mails = mailpit
        .wait_for(&query(&env), ORDERS as usize, Duration::from_secs(120))
        .await;
    assert_one_mail_each(&env, &mails, 1..=ORDERS);
    let records = email_sent_records(&env, ORDERS as usize).await;
    assert_one_record_each(&records, 1..=ORDERS);

    assert!(service.terminate(Duration::from_secs(30)).success());
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Forwards every connection on `listener` to Mailpit's SMTP port.
fn forward_to(mailpit: &Mailpit, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let target = format!("{}:{}", mailpit.smtp_host, mailpit.smtp_port);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn while_smtp_is_down_nothing_is_marked_sent_and_once_it_is_up_every_order_gets_one_email() {
    const ORDERS: u64 = 6;
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    // A port nobody listens on (until the test opens it below).
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let smtp_vars = || {
        vec![
            ("SMTP_HOST".to_string(), "127.0.0.1".to_string()),
            ("SMTP_PORT".to_string(), port.to_string()),
            ("EMAIL_RETRY_INITIAL_MS".to_string(), "100".to_string()),
            ("EMAIL_RETRY_MAX_MS".to_string(), "1000".to_string()),
        ]
    };
    let api = spawn_orders(&env).await;
    let transactions = spawn_transactions(&env, "a");
    let email = spawn_email(&env, smtp_vars());

    let bodies = (1..=ORDERS).map(|id| body(&env, id, id == 2)).collect();
    let statuses = post_all(&api.url, bodies, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    wait_for_records(&env, Topic::OrderConfirmed, ORDERS as usize).await;

    // Several attempts fail meanwhile; none may count as sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let env2 = env.clone();
    let marked = tokio::task::spawn_blocking(move || {
        let mut reader = env2.reader(&env2.topic(Topic::OrderEmailSent));
        reader.read_until("a quiet topic", Duration::from_secs(10), |_| true);
        reader.records.len()
    })
    .await
    .unwrap();
    assert_eq!(marked, 0, "orders marked sent while SMTP is down");
    assert!(mailpit.search(&query(&env)).await.is_empty());

    // Stopping while it retries is prompt, and commits nothing.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), email.stop())
        .await
        .expect("the email service stops promptly while SMTP is down")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));

    // Restarted while SMTP is still down, it keeps retrying until the server comes up.
    let email = spawn_email(&env, smtp_vars());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let proxy = forward_to(&mailpit, listener);

    let mails = mailpit
        .wait_for(&query(&env), ORDERS as usize, Duration::from_secs(60))
        .await;
    assert_one_mail_each(&env, &mails, 1..=ORDERS);
    let records = email_sent_records(&env, ORDERS as usize).await;
    assert_one_record_each(&records, 1..=ORDERS);

    email.stop().await.unwrap();
    proxy.abort();
    transactions.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_goes_to_the_dlq_and_the_next_order_still_gets_its_email() {
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    let source = env.topic(Topic::OrderConfirmed);
    let dlq = env.dlq(Topic::OrderConfirmed);
    // Both on one key, so in one partition and in this order.
    env.produce(&source, "k", b"{\"order_id\": \"k\", broken")
        .await;
    // What the seed's transactions backend writes: must be e-mailed.
    let seed = json!({"user_id": 7, "order_id": 41, "user_email": recipient(&env, 41),
        "order_details": {"price": 99, "item": "POANG chair"}, "time": 1_700_000_000.5,
        "status": "confirmed"});
    env.produce(&source, "k", seed.to_string().as_bytes()).await;

    let email = spawn_email(&env, mailpit.smtp_vars());

    let env2 = env.clone();
    let dead = tokio::task::spawn_blocking(move || {
        env2.reader(&dlq)
            .read_at_least(1, Duration::from_secs(60))
            .to_vec()
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"{\"order_id\": \"k\", broken");
    assert_eq!(dead[0].key.as_deref(), Some("k"));
    assert_eq!(dead[0].headers["dlq.topic"], source);
    assert_eq!(dead[0].headers["dlq.offset"], "0");
    assert_eq!(dead[0].headers["dlq.service"], "email");
    assert!(dead[0].headers.contains_key("dlq.partition"));
    assert!(!dead[0].headers["dlq.error"].is_empty());

    let mails = mailpit
        .wait_for(&query(&env), 1, Duration::from_secs(60))
        .await;
    assert_one_mail_each(&env, &mails, 41..=41);
    let mail = mailpit.message(&mails[0].id).await;
    assert_eq!(mail.subject, "Your flatpack order 41 is confirmed");
    assert!(mail.text.contains("POANG chair"), "{}", mail.text);
    assert!(mail.text.contains("99.00"), "{}", mail.text);
    let records = email_sent_records(&env, 1).await;
    assert_one_record_each(&records, 41..=41);

    email.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_already_on_order_email_sent_is_not_emailed_again() {
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    // Order 1 was e-mailed by an earlier run that stopped before committing its offset.
    let mut sent = confirmed(&env, 1);
    sent["status"] = json!(true);
    env.produce(
        &env.topic(Topic::OrderEmailSent),
        "1",
        sent.to_string().as_bytes(),
    )
    .await;
    produce_confirmed(&env, &[1, 2]).await;

    let email = spawn_email(&env, mailpit.smtp_vars());

    let mails = mailpit
        .wait_for(&query(&env), 1, Duration::from_secs(60))
        .await;
    assert_one_mail_each(&env, &mails, 2..=2);
    let records = email_sent_records(&env, 2).await;
    assert_eq!(records.len(), 2, "only order 2 got a new record");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.key.as_deref() == Some("2"))
            .count(),
        1
    );

    email.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_of_an_order_in_hand_at_once_get_one_email() {
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    // Three copies of order 3, then order 4, all waiting before the service starts: they
    // are taken into hand together (EMAIL_CONCURRENCY 32), long before any is finished.
    produce_confirmed(&env, &[3, 3, 3, 4]).await;

    let email = spawn_email(&env, mailpit.smtp_vars());

    let mails = mailpit
        .wait_for(&query(&env), 2, Duration::from_secs(60))
        .await;
    assert_one_mail_each(&env, &mails, 3..=4);
    let records = email_sent_records(&env, 2).await;
    assert_one_record_each(&records, 3..=4);

    email.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_group_member_joins_again_and_emails_every_later_order() {
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    let mut vars = mailpit.smtp_vars();
    vars.push(("EMAIL_INSTANCE_ID".into(), "usurped".into()));
    let email = spawn_email(&env, vars);
    produce_confirmed(&env, &(1..=10).collect::<Vec<_>>()).await;
    wait_for_records(&env, Topic::OrderEmailSent, 10).await;

    // Another consumer takes the service's static membership: its own consumer is fenced.
    let usurper = env.clone();
    let source = env.topic(Topic::OrderConfirmed);
    tokio::task::spawn_blocking(move || usurper.usurp_static_member("email", "usurped", &source))
        .await
        .unwrap();

    produce_confirmed(&env, &(11..=20).collect::<Vec<_>>()).await;
    let mails = mailpit
        .wait_for(&query(&env), 20, Duration::from_secs(120))
        .await;
    assert_one_mail_each(&env, &mails, 1..=20);
    let records = email_sent_records(&env, 20).await;
    assert_one_record_each(&records, 1..=20);

    email.stop().await.expect("a clean stop, not an error");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_emailed_before_is_not_emailed_again_after_retention_deleted_its_record() {
    let env = test_env!();
    let Some(mailpit) = mailpit() else { return };
    create_topics(&env).await;
    let store_dir = std::env::temp_dir().join(format!("{}email-store", env.prefix));
    let mut vars = env.service_vars();
    vars.extend(mailpit.smtp_vars());
    vars.push(("EMAIL_INSTANCE_ID".into(), "kept".into()));
    // One input at a time: when order 4's record is written, the copies before it are done.
    vars.push(("EMAIL_CONCURRENCY".into(), "1".into()));
    vars.push(("FLATPACK_STORE_DIR".into(), store_dir.display().to_string()));
    // The checkpoints move past this instance's own records within 300 ms of writing them.
    vars.push(("EMAIL_HANDLED_READ_INTERVAL_MS".into(), "300".into()));
    let email = ServiceProcess::start("email", &vars);
    produce_confirmed(&env, &[1, 2, 3]).await;
    wait_for_records(&env, Topic::OrderEmailSent, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(email.terminate(Duration::from_secs(30)).success());

    // A restart reads none of the three records again: the copy has them, and its
    // checkpoints are past them.
    let ops = free_addr();
    let mut restarted = vars.clone();
    restarted.push(("EMAIL_OPS_ADDR".into(), ops.clone()));
    let email = ServiceProcess::start("email", &restarted);
    let changelog = env.topic(Topic::OrderEmailSent);
    let series = format!("flatpack_state_restored_total{{changelog=\"{changelog}\"}}");
    let metrics = scrape_until(
        &format!("http://{ops}/metrics"),
        Duration::from_secs(60),
        |text| text.lines().any(|line| line.starts_with(&series)),
    )
    .await;
    let restored = format!("{series} 0");
    assert!(
        metrics.lines().any(|line| line == restored),
        "the restart read nothing again ({restored}):\n{metrics}"
    );
    assert!(email.terminate(Duration::from_secs(30)).success());

    // Retention deletes the records of the e-mails sent; the decisions come again (a
    // replay), before a new one.
    env.delete_all_records(&env.topic(Topic::OrderEmailSent))
        .await;
    produce_confirmed(&env, &[1, 2, 3, 4]).await;
    let email = ServiceProcess::start("email", &vars);
    let records = email_sent_records(&env, 1).await;
    assert_one_record_each(&records, 4..=4);
    let mails = mailpit
        .wait_for(&query(&env), 4, Duration::from_secs(60))
        .await;
    assert_one_mail_each(&env, &mails, 1..=4);

    assert!(email.terminate(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(&store_dir);
    env.cleanup().await;
}
