//! Every consuming service SIGKILLed and restarted at once, in turn, under a steady stream.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::helpers::mailpit::mailpit;
use crate::helpers::{TestEnv, broker};
use crate::pipeline::{CONSUMERS, Outputs, Pipeline, Stream, assert_exactly_once, now_ms, report};

#[tokio::test(flavor = "multi_thread")]
async fn consuming_services_killed_in_turn_lose_and_repeat_nothing_and_catch_up_at_once() {
    const KILLS: usize = 8;
    let _alone = crate::ONE_AT_A_TIME.lock().await;
    let Some(servers) = broker::bootstrap_servers().await else {
        return;
    };
    let Some(mailpit) = mailpit() else { return };
    let env = TestEnv::on(&servers, 1);
    let mut pipeline = Pipeline::start(&env, &mailpit).await;
    let stream = Stream::start(&env, &pipeline.url, 100, 2_000);

    // transactions, email, analytics, transactions, ...: email is killed last.
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        pipeline.kill_and_restart(CONSUMERS[kill % CONSUMERS.len()]);
    }
    let kills_over_ms = now_ms();
    let answers = stream.finish().await;
    let outputs = assert_exactly_once(&env, &mailpit, &answers).await;
    pipeline.assert_all_running();

    let everyone: BTreeSet<u64> = answers.iter().map(|a| a.order_id).collect();
    let last_decision = Outputs::last_of(&outputs.decisions, &everyone).expect("decisions");
    let last_email = Outputs::last_of(&outputs.emails_sent, &everyone).expect("e-mails");
    report(&format!(
        "{} orders, {KILLS} SIGKILLs; last decision {:.1} s and last e-mail {:.1} s after the kills stopped; {} e-mails sent again with the same Message-ID",
        answers.len(),
        (last_decision - kills_over_ms) as f64 / 1e3,
        (last_email - kills_over_ms) as f64 / 1e3,
        outputs.repeated_mails,
    ));
    assert!(
        last_email - last_decision <= 10_000,
        "the last e-mail went out {} ms after the last decision",
        last_email - last_decision
    );
}
