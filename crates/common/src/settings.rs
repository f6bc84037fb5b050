//! Settings from the environment, shared by all services.
//!
//! Every service describes its settings the same way: a `Deserialize` struct whose fields
//! are renamed to the lower-cased names of the environment variables it reads, with
//! `#[serde(default)]` and a `Default` that holds every default in one place, durations as
//! [`Duration`]s (read from `*_MS` variables through [`millis`]), values with a syntax of
//! their own parsed through [`parsed`], and secrets in [`Secret`], which never prints. The
//! struct implements [`Settings`], whose [`Settings::check`] holds what the types cannot
//! say (ranges, non-empty names); [`Settings::from_env`] reads, checks, and reports a bad
//! value with the name of its variable and what is wrong with it.
//!
//! Kafka client properties that flatpack does not set itself (SASL, SSL, timeouts, ...) pass
//! through untouched: `KAFKA_CONFIG_SECURITY_PROTOCOL=SASL_SSL` becomes librdkafka's
//! `security.protocol=SASL_SSL`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, ConfigError, Environment};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::topics::Topics;

/// Prefix of the environment variables passed through to librdkafka.
pub const KAFKA_CONFIG_PREFIX: &str = "KAFKA_CONFIG_";

/// A setting that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting {var}: {problem}")]
pub struct SettingsError {
    /// The environment variable at fault.
    pub var: String,
    pub problem: String,
}

impl SettingsError {
    pub fn new(var: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            problem: problem.into(),
        }
    }
}

/// A service's settings, read from the environment variables named by its fields.
pub trait Settings: DeserializeOwned {
    /// Checks what the field types cannot say; an error names the variable at fault.
    fn check(&self) -> Result<(), SettingsError> {
        Ok(())
    }

    /// Reads and checks the settings from the given variables (a test's, a tool's).
    fn from_vars<I>(vars: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let settings: Self = from_vars(vars)?;
        settings.check()?;
        Ok(settings)
    }

    /// Reads and checks the settings from the process environment.
    fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(std::env::vars())
    }
}

/// `#[serde(deserialize_with = "millis")]`: a duration given in whole milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// `#[serde(deserialize_with = "parsed")]`: a value with a syntax of its own (a mailbox, a
/// choice of words), parsed with its `FromStr`; its error says what is wrong.
pub fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.trim()
        .parse()
        .map_err(|err| serde::de::Error::custom(format!("{text:?} is not valid: {err}")))
}

/// A secret setting (a password): its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Owned `(name, value)` pairs from literals: the input of [`from_vars`] in tests and tools.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Reads settings of type `T` from the given variables, unchecked: [`Settings::from_vars`]
/// reads and checks.
pub fn from_vars<T, I>(vars: I) -> Result<T, SettingsError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let vars: HashMap<String, String> = vars.into_iter().collect();
    Config::builder()
        .add_source(Environment::default().source(Some(vars.into_iter().collect())))
        .build()
        .and_then(Config::try_deserialize)
        .map_err(describe)
}

/// The environment variables that settings of type `T` are read from: its field names, after
/// `#[serde(rename)]`, upper-cased, in declaration order. Fields with `#[serde(skip)]` read
/// none (the `KAFKA_CONFIG_*` pass-through of [`KafkaSettings`] is one such: match it by
/// [`KAFKA_CONFIG_PREFIX`]).
///
/// Derived from the code, so deployment files (compose, Kubernetes) can be checked against
/// what a service really reads. `T` must be a plain struct (no `#[serde(flatten)]`).
pub fn env_var_names<T: DeserializeOwned>() -> Vec<String> {
    let mut fields: &'static [&'static str] = &[];
    // The probe always "fails" after capturing the field names: nothing is deserialized.
    let _ = T::deserialize(FieldNames {
        fields: &mut fields,
    });
    fields.iter().map(|field| field.to_uppercase()).collect()
}

/// A deserializer that only records the field names a struct asks for.
struct FieldNames<'a> {
    fields: &'a mut &'static [&'static str],
}

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("settings must be a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.fields = fields;
        Err(serde::de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn describe(err: ConfigError) -> SettingsError {
    match err {
        ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => SettingsError::new(
            key.to_uppercase(),
            format!("expected {expected}, found {unexpected}"),
        ),
        ConfigError::At {
            error,
            key: Some(key),
            ..
        } => {
            let inner = describe(*error);
            let problem = if inner.var.is_empty() {
                inner.problem
            } else {
                format!("{}", inner)
            };
            SettingsError::new(key.to_uppercase(), problem)
        }
        other => SettingsError::new("", other.to_string()),
    }
}

/// Checks that the setting `var` lies within `range`.
pub fn check_range<T>(
    var: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), SettingsError>
where
    T: PartialOrd + fmt::Debug,
{
    if range.contains(&value) {
        Ok(())
    } else {
        Err(SettingsError::new(
            var,
            format!(
                "must be between {:?} and {:?}, found {value:?}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Where the Kafka cluster is and how flatpack's topics are laid out on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `KAFKA_BOOTSTRAP_SERVERS`: comma-separated `host:port` list.
    #[serde(rename = "kafka_bootstrap_servers")]
    pub bootstrap_servers: String,
    /// `FLATPACK_TOPIC_PREFIX`: namespace for topic names and group ids (tests use one each).
    #[serde(rename = "flatpack_topic_prefix")]
    pub topic_prefix: String,
    /// `FLATPACK_TOPIC_PARTITIONS`: partitions of topics created at start-up.
    #[serde(rename = "flatpack_topic_partitions")]
    pub partitions: i32,
    /// `FLATPACK_TOPIC_REPLICATION_FACTOR`: replication factor of topics created at start-up.
    #[serde(rename = "flatpack_topic_replication_factor")]
    pub replication_factor: i32,
    /// `FLATPACK_STORE_DIR`: where services keep the on-disk copies of their state stores
    /// (see [`crate::kafka::state`]); unset: in memory, read again from the changelogs at
    /// each start.
    #[serde(rename = "flatpack_store_dir")]
    pub store_dir: Option<PathBuf>,
    /// `KAFKA_CONFIG_*`: librdkafka properties passed through, e.g. for SASL/SSL.
    #[serde(skip)]
    pub client_config: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            topic_prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
            store_dir: None,
            client_config: BTreeMap::new(),
        }
    }
}

impl Settings for KafkaSettings {
    fn check(&self) -> Result<(), SettingsError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(SettingsError::new(
                "KAFKA_BOOTSTRAP_SERVERS",
                "must name at least one host:port",
            ));
        }
        check_range("FLATPACK_TOPIC_PARTITIONS", self.partitions, 1..=10_000)?;
        check_range(
            "FLATPACK_TOPIC_REPLICATION_FACTOR",
            self.replication_factor,
            1..=32,
        )?;
        if let Some(bad) = self
            .topic_prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(SettingsError::new(
                "FLATPACK_TOPIC_PREFIX",
                format!("may hold only ASCII letters, digits, '.', '_' and '-', found {bad:?}"),
            ));
        }
        Ok(())
    }

    /// Also collects the `KAFKA_CONFIG_*` pass-through properties.
    fn from_vars<I>(vars: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut settings: Self = from_vars(vars.iter().cloned())?;
        settings.client_config = passthrough(&vars)?;
        settings.check()?;
        Ok(settings)
    }
}

impl KafkaSettings {
    pub fn topics(&self) -> Topics {
        Topics::new(self.topic_prefix.clone())
    }
}

/// `KAFKA_CONFIG_SASL_MECHANISMS=PLAIN` → `sasl.mechanisms=PLAIN`.
fn passthrough(vars: &[(String, String)]) -> Result<BTreeMap<String, String>, SettingsError> {
    vars.iter()
        .filter_map(|(name, value)| {
            let property = name.strip_prefix(KAFKA_CONFIG_PREFIX)?;
            if property.is_empty() || property.starts_with('_') || property.ends_with('_') {
                return Some(Err(SettingsError::new(
                    name.clone(),
                    "does not name a librdkafka property",
                )));
            }
            Some(Ok((
                property.to_lowercase().replace('_', "."),
                value.clone(),
            )))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let settings = KafkaSettings::from_vars(vars(&[])).unwrap();
        assert_eq!(settings.bootstrap_servers, "localhost:9092");
        assert_eq!(settings.partitions, 6);
        assert_eq!(settings.replication_factor, 1);
        assert_eq!(settings.topic_prefix, "");
    }

    #[test]
    fn values_are_read_and_librdkafka_properties_pass_through() {
        let settings = KafkaSettings::from_vars(vars(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "b1:9092,b2:9092"),
            ("FLATPACK_TOPIC_PARTITIONS", "12"),
            ("FLATPACK_TOPIC_REPLICATION_FACTOR", "3"),
            ("FLATPACK_TOPIC_PREFIX", "staging."),
            ("KAFKA_CONFIG_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_CONFIG_SASL_MECHANISMS", "PLAIN"),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        assert_eq!(settings.bootstrap_servers, "b1:9092,b2:9092");
        assert_eq!(settings.partitions, 12);
        assert_eq!(settings.replication_factor, 3);
        assert_eq!(settings.topics().scoped("g"), "staging.g");
        assert_eq!(
            settings.client_config,
            BTreeMap::from([
                ("sasl.mechanisms".to_string(), "PLAIN".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ])
        );
    }

    #[test]
    fn a_string_is_kept_even_when_it_looks_like_a_number() {
        let settings =
            KafkaSettings::from_vars(vars(&[("FLATPACK_TOPIC_PREFIX", "2024")])).unwrap();
        assert_eq!(settings.topic_prefix, "2024");
    }

    #[test]
    fn env_var_names_come_from_the_renamed_fields() {
        assert_eq!(
            env_var_names::<KafkaSettings>(),
            [
                "KAFKA_BOOTSTRAP_SERVERS",
                "FLATPACK_TOPIC_PREFIX",
                "FLATPACK_TOPIC_PARTITIONS",
                "FLATPACK_TOPIC_REPLICATION_FACTOR",
                "FLATPACK_STORE_DIR",
            ]
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(default)]
    struct Example {
        #[serde(rename = "example_wait_ms", deserialize_with = "millis")]
        wait: Duration,
        #[serde(rename = "example_level", deserialize_with = "parsed")]
        level: u8,
        #[serde(rename = "example_token")]
        token: Option<Secret>,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                wait: Duration::from_secs(1),
                level: 3,
                token: None,
            }
        }
    }

    impl Settings for Example {
        fn check(&self) -> Result<(), SettingsError> {
            check_range(
                "EXAMPLE_WAIT_MS",
                self.wait,
                Duration::ZERO..=Duration::from_secs(5),
            )
        }
    }

    #[test]
    fn the_settings_pattern_reads_durations_parsed_values_and_secrets_and_checks_them() {
        let example = Example::from_vars(vars(&[])).unwrap();
        assert_eq!((example.wait, example.level), (Duration::from_secs(1), 3));
        let example = Example::from_vars(vars(&[
            ("EXAMPLE_WAIT_MS", "250"),
            ("EXAMPLE_LEVEL", " 7 "),
            ("EXAMPLE_TOKEN", "hunter2"),
        ]))
        .unwrap();
        assert_eq!(example.wait, Duration::from_millis(250));
        assert_eq!(example.level, 7);
        assert_eq!(example.token.as_ref().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{example:?}").contains("hunter2"));
        let err = Example::from_vars(vars(&[("EXAMPLE_WAIT_MS", "6000")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting EXAMPLE_WAIT_MS: must be between 0ns and 5s, found 6s"
        );
        let err = Example::from_vars(vars(&[("EXAMPLE_LEVEL", "high")])).unwrap_err();
        assert_eq!(err.var, "EXAMPLE_LEVEL");
        assert!(err.problem.contains("\"high\" is not valid"), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("FLATPACK_TOPIC_PARTITIONS", "many"),
            ("FLATPACK_TOPIC_PARTITIONS", "0"),
            ("FLATPACK_TOPIC_REPLICATION_FACTOR", "-1"),
            ("KAFKA_BOOTSTRAP_SERVERS", " "),
            ("FLATPACK_TOPIC_PREFIX", "a b"),
            ("KAFKA_CONFIG_", "x"),
        ] {
            let err = KafkaSettings::from_vars(vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
