//! The email service's settings: where the SMTP server is, how to talk to it, and who the
//! e-mails come from. Read from the environment through [`common::settings`]; a bad value
//! is reported with the name of its variable.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use common::Settings;
use common::kafka::at_least_once::Backoff;
use common::settings::{Secret, SettingsError, check_range, millis, parsed};
use lettre::Address;
use lettre::message::Mailbox;
use serde::Deserialize;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (a local relay, Mailpit in tests).
    None,
    /// Plain connection upgraded with STARTTLS, which must succeed.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

impl FromStr for SmtpTls {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Tls),
            _ => Err("expected none, starttls or tls".into()),
        }
    }
}

/// The email service's own settings (the Kafka ones are shared: [`common::KafkaSettings`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EmailSettings {
    /// `SMTP_HOST` (default `localhost`).
    pub smtp_host: String,
    /// `SMTP_PORT` (default 1025, Mailpit's).
    pub smtp_port: u16,
    /// `SMTP_USERNAME` and `SMTP_PASSWORD`: both or neither (see [`Self::credentials`]).
    pub smtp_username: Option<String>,
    pub smtp_password: Option<Secret>,
    /// `SMTP_TLS`: `none` (default), `starttls` or `tls`.
    #[serde(deserialize_with = "parsed")]
    pub smtp_tls: SmtpTls,
    /// `SMTP_TIMEOUT_MS`: how long one SMTP command may take (default 10000).
    #[serde(rename = "smtp_timeout_ms", deserialize_with = "millis")]
    pub smtp_timeout: Duration,
    /// `EMAIL_FROM` (default `flatpack <orders@flatpack.example>`).
    #[serde(rename = "email_from", deserialize_with = "parsed")]
    pub from: Mailbox,
    /// `EMAIL_RETRY_INITIAL_MS` (default 500) and `EMAIL_RETRY_MAX_MS` (default 30000): the
    /// waits between attempts while the SMTP server is unreachable (see [`Self::retry`]).
    #[serde(rename = "email_retry_initial_ms", deserialize_with = "millis")]
    pub retry_initial: Duration,
    #[serde(rename = "email_retry_max_ms", deserialize_with = "millis")]
    pub retry_max: Duration,
    /// `EMAIL_CONCURRENCY` (default 32): most e-mails in flight at once, each on its own SMTP
    /// connection.
    #[serde(rename = "email_concurrency")]
    pub concurrency: usize,
    /// `EMAIL_INSTANCE_ID`: this instance's static membership in the consumer group, unique
    /// among running instances and the same across its restarts, so that a restarted
    /// instance takes its partitions back at once. Unset: a new member at every start, and a
    /// crashed instance's partitions wait until the group gives up on it.
    #[serde(rename = "email_instance_id")]
    pub instance_id: Option<String>,
    /// `EMAIL_HANDLED_READ_INTERVAL_MS` (default 30000): how often the keys on
    /// `order_email_sent` are read on from where the last read stopped, this instance's own
    /// included, so that a restart reads again at most that long's worth.
    #[serde(rename = "email_handled_read_interval_ms", deserialize_with = "millis")]
    pub handled_read_interval: Duration,
    /// `EMAIL_OPS_ADDR`: where `/metrics`, `/healthz` and `/readyz` are served.
    #[serde(rename = "email_ops_addr")]
    pub ops_addr: SocketAddr,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            smtp_host: "localhost".into(),
            smtp_port: 1025,
            smtp_username: None,
            smtp_password: None,
            smtp_tls: SmtpTls::None,
            smtp_timeout: Duration::from_secs(10),
            // A literal address, checked by the settings tests.
            from: Mailbox::new(
                Some("flatpack".into()),
                Address::new_dangerous("orders", "flatpack.example"),
            ),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            concurrency: 32,
            instance_id: None,
            handled_read_interval: Duration::from_secs(30),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9103)),
        }
    }
}

impl Settings for EmailSettings {
    fn check(&self) -> Result<(), SettingsError> {
        if self.smtp_host.trim().is_empty() || self.smtp_host.trim().contains(char::is_whitespace) {
            return Err(SettingsError::new("SMTP_HOST", "must be a host name"));
        }
        check_range("SMTP_PORT", self.smtp_port, 1..=u16::MAX)?;
        match (self.username(), self.password()) {
            (Some(_), None) => {
                return Err(SettingsError::new(
                    "SMTP_PASSWORD",
                    "must be set when SMTP_USERNAME is",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingsError::new(
                    "SMTP_USERNAME",
                    "must be set when SMTP_PASSWORD is",
                ));
            }
            _ => {}
        }
        check_range(
            "SMTP_TIMEOUT_MS",
            self.smtp_timeout,
            Duration::from_millis(100)..=Duration::from_secs(600),
        )?;
        check_range(
            "EMAIL_RETRY_INITIAL_MS",
            self.retry_initial,
            Duration::from_millis(1)..=Duration::from_secs(60),
        )?;
        check_range(
            "EMAIL_RETRY_MAX_MS",
            self.retry_max,
            self.retry_initial..=Duration::from_secs(3_600),
        )?;
        check_range("EMAIL_CONCURRENCY", self.concurrency, 1..=256)?;
        check_range(
            "EMAIL_HANDLED_READ_INTERVAL_MS",
            self.handled_read_interval,
            Duration::from_millis(100)..=Duration::from_secs(3_600),
        )?;
        if let Some(id) = &self.instance_id
            && (id.trim().is_empty() || id.trim().contains(char::is_whitespace))
        {
            return Err(SettingsError::new(
                "EMAIL_INSTANCE_ID",
                "must be a name without spaces, or unset",
            ));
        }
        Ok(())
    }
}

impl EmailSettings {
    /// The SMTP server's host name, without surrounding blanks.
    pub fn host(&self) -> &str {
        self.smtp_host.trim()
    }

    /// User name and password for the SMTP server, when set.
    pub fn credentials(&self) -> Option<(&str, &Secret)> {
        self.username().zip(self.password())
    }

    /// The instance id, without surrounding blanks, when set.
    pub fn instance(&self) -> Option<&str> {
        self.instance_id.as_deref().map(str::trim)
    }

    /// The waits between attempts while the SMTP server is unreachable.
    pub fn retry(&self) -> Backoff {
        Backoff {
            initial: self.retry_initial,
            max: self.retry_max,
        }
    }

    fn username(&self) -> Option<&str> {
        self.smtp_username.as_deref().filter(|s| !s.is_empty())
    }

    fn password(&self) -> Option<&Secret> {
        self.smtp_password
            .as_ref()
            .filter(|s| !s.expose().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::settings::vars;

    #[test]
    fn defaults_point_at_a_local_plain_smtp_server() {
        let settings = EmailSettings::from_vars(vars(&[])).unwrap();
        assert_eq!(settings.smtp_host, "localhost");
        assert_eq!(settings.smtp_port, 1025);
        assert_eq!(settings.smtp_tls, SmtpTls::None);
        assert_eq!(settings.credentials(), None);
        assert_eq!(
            settings.from,
            "flatpack <orders@flatpack.example>".parse().unwrap()
        );
        assert_eq!(settings.retry().max, Duration::from_secs(30));
        assert_eq!(settings.concurrency, 32);
        assert_eq!(settings.handled_read_interval, Duration::from_secs(30));
    }

    #[test]
    fn values_are_read() {
        let settings = EmailSettings::from_vars(vars(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_PORT", "587"),
            ("SMTP_USERNAME", "orders"),
            ("SMTP_PASSWORD", "s3cret"),
            ("SMTP_TLS", "STARTTLS"),
            ("EMAIL_FROM", "Shop <shop@example.com>"),
            ("EMAIL_RETRY_MAX_MS", "2000"),
            ("EMAIL_CONCURRENCY", "4"),
            ("EMAIL_HANDLED_READ_INTERVAL_MS", "1500"),
        ]))
        .unwrap();
        assert_eq!(settings.smtp_host, "smtp.example.com");
        assert_eq!(settings.smtp_port, 587);
        assert_eq!(settings.smtp_tls, SmtpTls::StartTls);
        assert_eq!(
            settings.credentials(),
            Some(("orders", &Secret::new("s3cret")))
        );
        assert_eq!(settings.from.email.to_string(), "shop@example.com");
        assert_eq!(settings.retry().max, Duration::from_secs(2));
        assert_eq!(settings.concurrency, 4);
        assert_eq!(settings.handled_read_interval, Duration::from_millis(1500));
        assert!(
            !format!("{settings:?}").contains("s3cret"),
            "the password is never printed"
        );
    }

    #[test]
    fn env_var_names_list_every_variable_read() {
        assert_eq!(
            common::settings::env_var_names::<EmailSettings>(),
            [
                "SMTP_HOST",
                "SMTP_PORT",
                "SMTP_USERNAME",
                "SMTP_PASSWORD",
                "SMTP_TLS",
                "SMTP_TIMEOUT_MS",
                "EMAIL_FROM",
                "EMAIL_RETRY_INITIAL_MS",
                "EMAIL_RETRY_MAX_MS",
                "EMAIL_CONCURRENCY",
                "EMAIL_INSTANCE_ID",
                "EMAIL_HANDLED_READ_INTERVAL_MS",
                "EMAIL_OPS_ADDR",
            ]
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (set, var) in [
            (vec![("SMTP_PORT", "smtp")], "SMTP_PORT"),
            (vec![("SMTP_PORT", "70000")], "SMTP_PORT"),
            (vec![("SMTP_PORT", "0")], "SMTP_PORT"),
            (vec![("SMTP_HOST", " ")], "SMTP_HOST"),
            (vec![("SMTP_TLS", "ssl")], "SMTP_TLS"),
            (vec![("SMTP_USERNAME", "orders")], "SMTP_PASSWORD"),
            (vec![("SMTP_PASSWORD", "s3cret")], "SMTP_USERNAME"),
            (vec![("SMTP_TIMEOUT_MS", "5")], "SMTP_TIMEOUT_MS"),
            (vec![("EMAIL_FROM", "not a mailbox")], "EMAIL_FROM"),
            (vec![("EMAIL_CONCURRENCY", "0")], "EMAIL_CONCURRENCY"),
            (vec![("EMAIL_CONCURRENCY", "many")], "EMAIL_CONCURRENCY"),
            (vec![("EMAIL_INSTANCE_ID", " ")], "EMAIL_INSTANCE_ID"),
            (
                vec![("EMAIL_HANDLED_READ_INTERVAL_MS", "10")],
                "EMAIL_HANDLED_READ_INTERVAL_MS",
            ),
            (
                vec![("EMAIL_INSTANCE_ID", "email one")],
                "EMAIL_INSTANCE_ID",
            ),
            (
                vec![("EMAIL_RETRY_INITIAL_MS", "0")],
                "EMAIL_RETRY_INITIAL_MS",
            ),
            (
                vec![
                    ("EMAIL_RETRY_INITIAL_MS", "5000"),
                    ("EMAIL_RETRY_MAX_MS", "100"),
                ],
                "EMAIL_RETRY_MAX_MS",
            ),
        ] {
            let err = EmailSettings::from_vars(vars(&set)).unwrap_err();
            assert_eq!(err.var, var, "{set:?}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
