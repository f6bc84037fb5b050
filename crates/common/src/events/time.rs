//! Timestamps as the seed writes them, seconds since the Unix epoch, and their UTC days.

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Latest accepted timestamp: the last second of year 9999.
const MAX_EPOCH_SECONDS: f64 = 253_402_300_799.0;

pub(super) fn deserialize_epoch_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<f64, D::Error> {
    let seconds = f64::deserialize(deserializer)?;
    if !(0.0..=MAX_EPOCH_SECONDS).contains(&seconds) {
        return Err(de::Error::custom(
            "must be seconds since the Unix epoch between 1970 and 9999",
        ));
    }
    Ok(seconds)
}

/// The UTC calendar day (`YYYY-MM-DD`) of a timestamp in seconds since the Unix epoch.
pub fn utc_day(epoch_seconds: f64) -> String {
    // Truncation is intended: the day of 12:00:00.9 is the day of 12:00:00.
    let seconds = epoch_seconds.clamp(0.0, MAX_EPOCH_SECONDS) as i64;
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.date_naive().to_string())
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, as the seed's `time.time()` gives them.
pub fn now_epoch_seconds() -> f64 {
    let now = chrono::Utc::now();
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_micros()) / 1e6
}
