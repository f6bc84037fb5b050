//! Logging set-up (and the metrics recorder, see [`crate::ops`]): human-readable lines by default, JSON lines with `LOG_FORMAT=json`.
//! The level filter comes from `RUST_LOG` (default `info`). Colours only on a terminal, so
//! that log files (the supervisor's, the tests') read as plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(service: &'static str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") | Err(_) => false,
        Ok(other) => {
            anyhow::bail!("invalid setting LOG_FORMAT: expected text or json, found {other:?}")
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|err| anyhow::anyhow!("installing the log subscriber: {err}"))?;
    // Metrics recorded before the recorder exists are lost: install it first thing too.
    crate::ops::metrics_handle();
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    Ok(())
}
