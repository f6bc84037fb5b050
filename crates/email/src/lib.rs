//! The email service: one e-mail per decided order.
//!
//! Reads `order_confirmed`, sends the customer a confirmation (or, for a declined payment, a
//! notice saying why) over SMTP as plain text and HTML, and then writes `order_email_sent`,
//! keyed by `order_id`. The input offset is committed only after the SMTP server took the
//! e-mail and the broker acknowledged the record ([`common::kafka::at_least_once`]); orders already on
//! `order_email_sent` are skipped, so a restart does not e-mail anyone twice. While the SMTP
//! server is unreachable the service retries the same order with capped backoff and moves on
//! only once it went out. Up to `EMAIL_CONCURRENCY` e-mails are in flight at once, each on a
//! pooled SMTP connection of its own. Messages that cannot be decoded go to
//! `order_confirmed.dlq`.
//!
//! The one case that sends an e-mail twice, a crash after the SMTP server took it and before
//! its record was acknowledged, sends it with the same `Message-ID` (made from the order id
//! and the kind of e-mail), which mail systems use to drop the copy.

pub mod settings;
pub mod smtp;
pub mod templates;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use common::events::{
    EmailKind, EmailSent, Order, OrderDecision, SCHEMA_VERSION, now_epoch_seconds,
};
use common::kafka::at_least_once::{AtLeastOnceConfig, Handler, run_at_least_once};
use common::kafka::exactly_once::Output;
use common::{KafkaSettings, Topic, kafka, ops};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use metrics::counter;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use settings::{EmailSettings, SmtpTls};
use smtp::{SendError, Smtp};

/// How long a write to `order_email_sent` may wait for the broker's acknowledgement before
/// it is tried again. Long enough to ride out a broker restart inside one write: a write
/// tried again after a timeout may land twice.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Orders in hand per SMTP connection: one being sent, the others waiting for a connection
/// or for the acknowledgement of their `order_email_sent` record.
const IN_HAND_PER_CONNECTION: usize = 4;

/// Sends the e-mail for each decision and says so on `order_email_sent`.
pub struct SendEmail {
    smtp: Smtp,
    from: Mailbox,
    output_topic: String,
}

impl std::fmt::Debug for SendEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendEmail")
            .field("from", &self.from)
            .field("output_topic", &self.output_topic)
            .finish_non_exhaustive()
    }
}

impl SendEmail {
    /// Sets up the SMTP connections' pool (connections are opened by the first sends).
    pub fn new(settings: &EmailSettings, output_topic: String) -> anyhow::Result<Self> {
        Ok(Self {
            smtp: Smtp::new(settings)?,
            from: settings.from.clone(),
            output_topic,
        })
    }

    /// The message for `decision`, or why there can be none.
    fn compose(&self, decision: &OrderDecision) -> anyhow::Result<Message> {
        let rendered = templates::render(decision).context("rendering the templates")?;
        let to: Mailbox = decision
            .order
            .user_email
            .as_str()
            .parse()
            .context("the address is not one SMTP accepts")?;
        Message::builder()
            .message_id(Some(message_id(
                &decision.order.order_id.to_string(),
                templates::kind_of(decision),
                self.from.email.domain(),
            )))
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .context("building the message")
    }

    /// The `order_email_sent` record for `decision`.
    fn record(&self, decision: &OrderDecision, kind: EmailKind, sent: bool) -> Output {
        let record = EmailSent {
            order: Order {
                schema: SCHEMA_VERSION,
                ..decision.order.clone()
            },
            status: sent,
            kind: Some(kind),
            sent_at: sent.then(now_epoch_seconds),
        };
        // Every field of a decoded decision serialises; an empty payload would only fail to
        // decode downstream, never silently.
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        Output::new(
            &self.output_topic,
            decision.order.order_id.to_string(),
            payload,
        )
    }
}

/// The `Message-ID` of the e-mail of `kind` for an order: the same for every send of it.
/// Characters outside the few a Message-ID may carry as they are go as `=XX` (hex).
fn message_id(order_id: &str, kind: EmailKind, domain: &str) -> String {
    let mut local = String::with_capacity(order_id.len() + 16);
    for byte in order_id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_') {
            local.push(char::from(byte));
        } else {
            local.push_str(&format!("={byte:02X}"));
        }
    }
    let kind = match kind {
        EmailKind::Confirmation => "confirmation",
        EmailKind::DeclinedNotice => "declined",
    };
    format!("<order-{local}.{kind}@{domain}>")
}

impl Handler for SendEmail {
    type Input = OrderDecision;

    fn key(&self, decision: &OrderDecision) -> String {
        decision.order.order_id.to_string()
    }

    async fn handle(&self, decision: &OrderDecision) -> anyhow::Result<Vec<Output>> {
        let order_id = &decision.order.order_id;
        let to = decision.order.user_email.masked();
        let kind = templates::kind_of(decision);
        let message = match self.compose(decision) {
            Ok(message) => message,
            Err(err) => {
                error!(order_id = %order_id, to = %to, ?kind, cause = %format!("{err:#}"), "e-mail cannot be composed; recorded as not sent");
                counter!("flatpack_emails_total", "outcome" => "failed").increment(1);
                return Ok(vec![self.record(decision, kind, false)]);
            }
        };
        let sent = match self.smtp.send(&message).await {
            Ok(()) => {
                debug!(order_id = %order_id, to = %to, ?kind, "e-mail sent");
                counter!("flatpack_emails_total", "outcome" => "sent").increment(1);
                ops::record_order_age("emailed", now_epoch_seconds() - decision.order.time);
                true
            }
            // A 5xx answer (e.g. no such mailbox) stays the same however often we ask.
            Err(SendError::Refused(err)) => {
                warn!(order_id = %order_id, to = %to, ?kind, cause = %err, "SMTP server refused the e-mail for good; recorded as not sent");
                counter!("flatpack_emails_total", "outcome" => "failed").increment(1);
                false
            }
            Err(SendError::Transient(err)) => {
                return Err(err.context(format!(
                    "sending the e-mail for order {order_id} to {to} via SMTP"
                )));
            }
        };
        Ok(vec![self.record(decision, kind, sent)])
    }
}

/// E-mails decided orders until `shutdown` completes; then finishes the e-mails in hand (or
/// abandons them uncommitted while the SMTP server is unreachable), commits and returns.
pub async fn run(
    kafka_settings: KafkaSettings,
    settings: EmailSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topics = kafka_settings.topics();
    let stopping = common::shutdown::cancelled_by(shutdown);
    let ready = ops::broker_readiness(&kafka_settings, topics.name(Topic::OrderConfirmed))?;
    tokio::spawn(ops::serve(settings.ops_addr, ready, stopping.clone()).await?);
    if !kafka::await_stage_topics(
        &kafka_settings,
        Topic::OrderConfirmed,
        Topic::OrderEmailSent,
        &stopping,
    )
    .await
    {
        return Ok(());
    }
    let handler = SendEmail::new(&settings, topics.name(Topic::OrderEmailSent))?;
    let config = AtLeastOnceConfig {
        service: "email",
        source: Topic::OrderConfirmed,
        group_id: topics.scoped("email"),
        instance_id: settings.instance().map(str::to_owned),
        handled: Some(Topic::OrderEmailSent),
        handled_read_interval: settings.handled_read_interval,
        // The pool holds EMAIL_CONCURRENCY connections; more orders in hand let the broker's
        // acknowledgements of finished e-mails overlap the next sends instead of holding a
        // connection idle.
        concurrency: settings.concurrency * IN_HAND_PER_CONNECTION,
        retry: settings.retry(),
        delivery_timeout: DELIVERY_TIMEOUT,
    };
    info!(smtp = %format!("{}:{}", settings.smtp_host, settings.smtp_port), tls = ?settings.smtp_tls, concurrency = settings.concurrency, "e-mailing decided orders");
    let stop = CancellationToken::new();
    let worker = run_at_least_once(&kafka_settings, &config, handler, &stop);
    tokio::pin!(worker);
    tokio::select! {
        result = &mut worker => return result,
        () = stopping.cancelled() => {
            info!("finishing the e-mails in hand");
            stop.cancel();
        }
    }
    worker.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_the_same_for_every_send_and_escapes_what_it_cannot_carry() {
        let id = message_id("1001", EmailKind::Confirmation, "flatpack.example");
        assert_eq!(id, "<order-1001.confirmation@flatpack.example>");
        assert_eq!(
            id,
            message_id("1001", EmailKind::Confirmation, "flatpack.example")
        );
        assert_eq!(
            message_id("a b>@c", EmailKind::DeclinedNotice, "x.example"),
            "<order-a=20b=3E=40c.declined@x.example>"
        );
    }
}
