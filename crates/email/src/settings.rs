//! The email service's settings: where the SMTP server is, how to talk to it, and who the
//! e-mails come from. Read from the environment through [`common::settings`]; a bad value
//! is reported with the name of its variable.

use std::fmt;
use std::time::Duration;

use common::kafka::at_least_once::Backoff;
use common::settings::{self, SettingsError, check_range};
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

/// An SMTP password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The email service's own settings (the Kafka ones are shared: [`common::KafkaSettings`]).
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// `SMTP_HOST` (default `localhost`).
    pub smtp_host: String,
    /// `SMTP_PORT` (default 1025, Mailpit's).
    pub smtp_port: u16,
    /// `SMTP_USERNAME` and `SMTP_PASSWORD`: both or neither.
    pub credentials: Option<(String, Password)>,
    /// `SMTP_TLS`: `none` (default), `starttls` or `tls`.
    pub smtp_tls: SmtpTls,
    /// `SMTP_TIMEOUT_MS`: how long one SMTP command may take (default 10000).
    pub smtp_timeout: Duration,
    /// `EMAIL_FROM` (default `flatpack <orders@flatpack.example>`).
    pub from: Mailbox,
    /// `EMAIL_RETRY_INITIAL_MS` (default 500) and `EMAIL_RETRY_MAX_MS` (default 30000): the
    /// waits between attempts while the SMTP server is unreachable.
    pub retry: Backoff,
    /// `EMAIL_CONCURRENCY` (default 32): most e-mails in flight at once, each on its own SMTP
    /// connection.
    pub concurrency: usize,
    /// `EMAIL_INSTANCE_ID`: this instance's static membership in the consumer group, unique
    /// among running instances and the same across its restarts, so that a restarted
    /// instance takes its partitions back at once. Unset: a new member at every start, and a
    /// crashed instance's partitions wait until the group gives up on it.
    pub instance_id: Option<String>,
}

/// The variables as they come, before they are checked: one field per variable the service
/// reads besides the Kafka ones, so [`settings::env_var_names`] lists them.
#[derive(Debug, Deserialize)]
pub struct EmailVars {
    #[serde(default = "default_host")]
    smtp_host: String,
    #[serde(default = "default_port")]
    smtp_port: u16,
    #[serde(default)]
    smtp_username: Option<String>,
    #[serde(default)]
    smtp_password: Option<String>,
    #[serde(default = "default_tls")]
    smtp_tls: String,
    #[serde(default = "default_timeout")]
    smtp_timeout_ms: u64,
    #[serde(default = "default_from")]
    email_from: String,
    #[serde(default = "default_retry_initial")]
    email_retry_initial_ms: u64,
    #[serde(default = "default_retry_max")]
    email_retry_max_ms: u64,
    #[serde(default = "default_concurrency")]
    email_concurrency: usize,
    #[serde(default)]
    email_instance_id: Option<String>,
}

fn default_host() -> String {
    "localhost".into()
}
fn default_port() -> u16 {
    1025
}
fn default_tls() -> String {
    "none".into()
}
fn default_timeout() -> u64 {
    10_000
}
fn default_from() -> String {
    "flatpack <orders@flatpack.example>".into()
}
fn default_retry_initial() -> u64 {
    500
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_concurrency() -> usize {
    32
}

impl EmailSettings {
    /// Reads and checks the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads and checks the settings from the given variables.
    pub fn from_vars<I>(vars: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: EmailVars = settings::from_vars(vars)?;
        vars.validate()
    }
}

impl EmailVars {
    fn validate(self) -> Result<EmailSettings, SettingsError> {
        let smtp_host = self.smtp_host.trim().to_owned();
        if smtp_host.is_empty() || smtp_host.contains(char::is_whitespace) {
            return Err(SettingsError::new("SMTP_HOST", "must be a host name"));
        }
        check_range("SMTP_PORT", self.smtp_port, 1..=u16::MAX)?;
        let smtp_tls = match self.smtp_tls.trim().to_ascii_lowercase().as_str() {
            "none" => SmtpTls::None,
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            other => {
                return Err(SettingsError::new(
                    "SMTP_TLS",
                    format!("expected none, starttls or tls, found {other:?}"),
                ));
            }
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let credentials = match (nonempty(self.smtp_username), nonempty(self.smtp_password)) {
            (Some(user), Some(password)) => Some((user, Password(password))),
            (None, None) => None,
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
        };
        check_range("SMTP_TIMEOUT_MS", self.smtp_timeout_ms, 100..=600_000)?;
        let from: Mailbox = self.email_from.parse().map_err(|err| {
            SettingsError::new("EMAIL_FROM", format!("is not a valid mailbox: {err}"))
        })?;
        check_range(
            "EMAIL_RETRY_INITIAL_MS",
            self.email_retry_initial_ms,
            1..=60_000,
        )?;
        check_range(
            "EMAIL_RETRY_MAX_MS",
            self.email_retry_max_ms,
            self.email_retry_initial_ms..=3_600_000,
        )?;
        check_range("EMAIL_CONCURRENCY", self.email_concurrency, 1..=256)?;
        let instance_id = match self.email_instance_id.map(|id| id.trim().to_owned()) {
            Some(id) if id.is_empty() || id.contains(char::is_whitespace) => {
                return Err(SettingsError::new(
                    "EMAIL_INSTANCE_ID",
                    "must be a name without spaces, or unset",
                ));
            }
            id => id,
        };
        Ok(EmailSettings {
            smtp_host,
            smtp_port: self.smtp_port,
            credentials,
            smtp_tls,
            smtp_timeout: Duration::from_millis(self.smtp_timeout_ms),
            from,
            retry: Backoff {
                initial: Duration::from_millis(self.email_retry_initial_ms),
                max: Duration::from_millis(self.email_retry_max_ms),
            },
            concurrency: self.email_concurrency,
            instance_id,
        })
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
        assert_eq!(settings.credentials, None);
        assert_eq!(
            settings.from.to_string(),
            "flatpack <orders@flatpack.example>"
        );
        assert_eq!(settings.retry.max, Duration::from_secs(30));
        assert_eq!(settings.concurrency, 32);
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
        ]))
        .unwrap();
        assert_eq!(settings.smtp_host, "smtp.example.com");
        assert_eq!(settings.smtp_port, 587);
        assert_eq!(settings.smtp_tls, SmtpTls::StartTls);
        assert_eq!(
            settings.credentials,
            Some(("orders".into(), Password("s3cret".into())))
        );
        assert_eq!(settings.from.email.to_string(), "shop@example.com");
        assert_eq!(settings.retry.max, Duration::from_secs(2));
        assert_eq!(settings.concurrency, 4);
        assert!(
            !format!("{settings:?}").contains("s3cret"),
            "the password is never printed"
        );
    }

    #[test]
    fn env_var_names_list_every_variable_read() {
        assert_eq!(
            settings::env_var_names::<EmailVars>(),
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
