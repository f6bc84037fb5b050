//! Where the tests' SMTP server comes from, and how a test reads the mailbox.
//!
//! 1. `MAILPIT_SMTP` (`host:port`) and `MAILPIT_HTTP` (its API's base URL), when set (the
//!    test script starts Mailpit with `scripts/mailpit.sh` and sets them).
//! 2. Otherwise no SMTP server: under `CI=true` the test fails; elsewhere it is skipped with
//!    a loud message on stderr.
//!
//! Tests share one Mailpit and run in parallel, so each test sends to its own recipients
//! (the test's topic prefix in the local part) and searches by them, never counting the
//! whole mailbox.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// The run's Mailpit: its SMTP address and HTTP API.
#[derive(Debug, Clone)]
pub struct Mailpit {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub http: String,
    client: reqwest::Client,
}

/// One message as Mailpit lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct MailSummary {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Subject")]
    pub subject: String,
    #[serde(rename = "To")]
    pub to: Vec<MailAddress>,
    #[serde(rename = "From")]
    pub from: MailAddress,
    /// The `Message-ID` header, without its angle brackets.
    #[serde(rename = "MessageID", default)]
    pub message_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MailAddress {
    #[serde(rename = "Address")]
    pub address: String,
}

/// One message with its bodies.
#[derive(Debug, Clone, Deserialize)]
pub struct Mail {
    #[serde(rename = "Subject")]
    pub subject: String,
    #[serde(rename = "Text")]
    pub text: String,
    #[serde(rename = "HTML")]
    pub html: String,
}

#[derive(Deserialize)]
struct SearchResult {
    messages: Vec<MailSummary>,
}

/// The run's Mailpit, or `None` (after saying so loudly) when there is none and the run is
/// not CI. Panics under `CI=true` without one.
pub fn mailpit() -> Option<Mailpit> {
    let smtp = std::env::var("MAILPIT_SMTP").unwrap_or_default();
    let http = std::env::var("MAILPIT_HTTP").unwrap_or_default();
    if smtp.trim().is_empty() || http.trim().is_empty() {
        let why = "MAILPIT_SMTP and MAILPIT_HTTP are not set";
        super::missing(
            "Mailpit",
            why,
            "Run `scripts/test.sh`, or run `scripts/mailpit.sh run --smtp-port S --http-port H` and set MAILPIT_SMTP=127.0.0.1:S and MAILPIT_HTTP=http://127.0.0.1:H.",
        );
        return None;
    }
    let (host, port) = smtp
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("MAILPIT_SMTP must be host:port, found {smtp:?}"));
    Some(Mailpit {
        smtp_host: host.to_owned(),
        smtp_port: port
            .parse()
            .unwrap_or_else(|_| panic!("MAILPIT_SMTP must be host:port, found {smtp:?}")),
        http: http.trim_end_matches('/').to_owned(),
        client: reqwest::Client::new(),
    })
}

impl Mailpit {
    /// The email service's settings for sending through this Mailpit.
    pub fn smtp_vars(&self) -> Vec<(String, String)> {
        vec![
            ("SMTP_HOST".into(), self.smtp_host.clone()),
            ("SMTP_PORT".into(), self.smtp_port.to_string()),
        ]
    }

    /// The messages matching Mailpit's search `query` (e.g. `to:t1234_`), newest first.
    pub async fn search(&self, query: &str) -> Vec<MailSummary> {
        // Mailpit answers a page of at most a few hundred messages however many are asked.
        const PAGE: usize = 500;
        let mut found = Vec::new();
        loop {
            let start = found.len().to_string();
            let limit = PAGE.to_string();
            let response = self
                .client
                .get(format!("{}/api/v1/search", self.http))
                .query(&[("query", query), ("start", &start), ("limit", &limit)])
                .send()
                .await
                .expect("Mailpit search");
            assert!(
                response.status().is_success(),
                "Mailpit search: {}",
                response.status()
            );
            let page = response
                .json::<SearchResult>()
                .await
                .expect("Mailpit search result")
                .messages;
            let last = page.len() < PAGE;
            found.extend(page);
            if last {
                return found;
            }
        }
    }

    /// One message with its plain-text and HTML bodies.
    pub async fn message(&self, id: &str) -> Mail {
        self.client
            .get(format!("{}/api/v1/message/{id}", self.http))
            .send()
            .await
            .expect("Mailpit message")
            .json()
            .await
            .expect("Mailpit message body")
    }

    /// Searches until at least `count` messages match, then until nothing new arrives for a
    /// moment (so that duplicates behind the last expected message are seen too). Panics if
    /// `count` is not reached within `deadline`.
    pub async fn wait_for(
        &self,
        query: &str,
        count: usize,
        deadline: Duration,
    ) -> Vec<MailSummary> {
        const SETTLE: Duration = Duration::from_millis(1500);
        let until = Instant::now() + deadline;
        let mut found = self.search(query).await;
        while found.len() < count {
            assert!(
                Instant::now() < until,
                "timed out after {deadline:?} waiting for {count} e-mails matching {query:?}; found {}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            found = self.search(query).await;
        }
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.search(query).await;
            if now.len() != found.len() {
                found = now;
                quiet_since = Instant::now();
            }
        }
        found
    }
}
