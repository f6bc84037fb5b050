//! One order, one trace: `POST /order` through transactions to email and analytics, each a
//! span in Jaeger, each the child of the span that wrote the message it handled.

use std::time::{Duration, Instant};

use crate::helpers::jaeger::{Jaeger, Trace, jaeger};
use crate::helpers::mailpit::mailpit;
use crate::helpers::{ServiceProcess, free_addr, order_body, scrape_until};
use crate::test_env;

/// Waits until Jaeger has spans of every one of `services` for trace `id`.
async fn wait_for_trace(jaeger: &Jaeger, id: &str, services: &[&str]) -> Trace {
    let deadline = Duration::from_secs(120);
    let until = Instant::now() + deadline;
    loop {
        let trace = jaeger.trace(id).await;
        match trace {
            Some(trace) if services.iter().all(|s| !trace.spans_of(s).is_empty()) => return trace,
            _ => assert!(
                Instant::now() < until,
                "trace {id} did not reach every one of {services:?} within {deadline:?}: {trace:#?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_through_all_four_services() {
    let env = test_env!();
    let Some(mail) = mailpit() else { return };
    let Some(binary) = jaeger() else { return };
    let jaeger = Jaeger::start(&binary).await;
    let mut vars = env.service_vars();
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), jaeger.otlp.clone()));
    vars.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let orders_addr = free_addr();
    let mut orders_vars = vars.clone();
    orders_vars.push(("ORDERS_HTTP_ADDR".into(), orders_addr.clone()));
    let _orders = ServiceProcess::start("orders", &orders_vars);
    let mut transactions_vars = vars.clone();
    transactions_vars.push(("TRANSACTIONS_INSTANCE_ID".into(), "traces".into()));
    let _transactions = ServiceProcess::start("transactions", &transactions_vars);
    let mut email_vars = vars.clone();
    email_vars.extend(mail.smtp_vars());
    let _email = ServiceProcess::start("email", &email_vars);
    let _analytics = ServiceProcess::start("analytics", &vars);

    // The customer's side already has a trace: the order continues it.
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let caller_span = format!("{:016x}", rand::random::<u64>() | 1);
    let client = reqwest::Client::new();
    let url = format!("http://{orders_addr}");
    scrape_until(&format!("{url}/readyz"), Duration::from_secs(60), |_| true).await;
    let response = client
        .post(format!("{url}/order"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&order_body(4711, "149.00"))
        .send()
        .await
        .expect("POST /order");
    assert_eq!(response.status(), 200);

    let trace = wait_for_trace(
        &jaeger,
        &trace_id,
        &["orders", "transactions", "email", "analytics"],
    )
    .await;
    let http = trace.spans_of("orders");
    assert_eq!(http.len(), 1, "{trace:#?}");
    let http = http[0];
    assert_eq!(http.operation_name, "POST /order");
    assert_eq!(http.parent(), Some(caller_span.as_str()), "{trace:#?}");
    // A batch read again after an abort is handled again: every such span is in the trace,
    // each the child of the span that wrote its message.
    let decided = trace.spans_of("transactions");
    for span in &decided {
        assert!(
            span.operation_name.ends_with("order_details process"),
            "{span:?}"
        );
        assert_eq!(span.parent(), Some(http.span_id.as_str()), "{trace:#?}");
    }
    let decided: Vec<&str> = decided.iter().map(|s| s.span_id.as_str()).collect();
    for service in ["email", "analytics"] {
        for span in trace.spans_of(service) {
            assert!(
                span.operation_name.ends_with("order_confirmed process"),
                "{span:?}"
            );
            let parent = span.parent().unwrap_or_default();
            assert!(
                decided.contains(&parent),
                "{service}: {span:?} not a child of {decided:?}"
            );
        }
    }
}
